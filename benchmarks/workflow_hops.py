"""Workflow scheduling overhead per DAG hop: from a node's completion to its dependent's start,
p50 and p95, for a chain and a fan-out/fan-in of cheap local ops and of instant provider nodes.

What it measures
    The whole platform as separate processes on a scratch database and Redis namespace, as
    ``benchmarks.generation_end_to_end`` starts it (simulator at latency scale 0, API,
    dispatcher, projections, a Dramatiq worker with ``--worker-processes`` x
    ``--worker-threads``), logging at WARNING. One user with 1,000,000 credits creates one
    workflow per shape over HTTP and starts ``--repeats`` runs of each, one run at a time, each
    with a distinct prompt (no generation or local-op cache hit across runs). Every graph's root
    is a ``generate`` node of ``sim-instant`` at 64x64, bound to the run's prompt input.

    Shapes (``--width`` N, default 50; a graph is at most 50 nodes deep):
      chain-local      root -> N - 1 ``colour_correct`` nodes one after the other (a chain of N
                       nodes; each has its own brightness, so no node is a cache hit of another)
      fan-out-local    root -> N parallel ``colour_correct`` nodes -> a tree of ``composite``
                       nodes joining them two by two (N - 1 joins)
      chain-provider   root -> N - 1 ``remove_background`` nodes (``bria-rmbg``, instant), a chain
      fan-out-provider root -> N parallel ``remove_background`` nodes (the run's outputs)

    A hop is measured on the run's own events (``container.workflows.events``, the write side):
    from the latest ``NodeCompleted`` of a node's upstream nodes to the node's start: the
    ``started_at`` its ``NodeCompleted`` carries (a local op: when the worker began the work) or
    its ``NodeStarted`` (a provider node: when its generation had been created). The root's start
    is measured from the run's ``Funded`` event and shown apart. Rows: ``chain`` hops, ``fan-out``
    hops (root -> each branch), ``fan-in`` hops (the later of a join's two inputs -> the join).

    Where a hop's time goes: a node is queued in the same transaction that completes its
    upstream (``NodeQueued`` has the completion's timestamp), so ``queued -> start`` is the
    dispatcher (woken by LISTEN/NOTIFY), Redis, the worker's fetch (an idle Dramatiq consumer
    backs off up to ``--worker-timeout-ms`` between fetches) and the reaction's reading of the
    run. For a provider node it is split at the generation's ``Requested`` event: ``queued ->
    generation`` (dispatch, pick-up, planning, the generation's creation) and ``generation ->
    NodeStarted`` (recording the start on the run).

Command
    .venv/bin/python -m benchmarks.workflow_hops [--width 50] [--repeats 3]
        [--shapes chain-local,fan-out-local,chain-provider,fan-out-provider]
        [--worker-processes 2] [--worker-threads 8] [--worker-timeout-ms N]

Target
    hop p50 <= 25 ms on 2 cores (reported, not enforced).

Output: a table of p50/p95 per shape and hop kind, a JSON line, and
``benchmarks/results/workflow_hops.json``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx

from benchmarks._support import (
    ApiProcess,
    ChildProcess,
    argument_parser,
    bench_environment,
    event_times,
    free_port,
    percentile,
    seed_user,
    server_version,
    simulated,
    start_platform,
    table,
    write_result,
)
from domain.workflow import RUN_TERMINAL, WorkflowExecution, dependencies
from infrastructure.broker import WORKER_POLL_MS
from interfaces.bootstrap import Container, build

NAME = "workflow_hops"
SIZE = 64
SHAPES = ("chain-local", "fan-out-local", "chain-provider", "fan-out-provider")
ROOT = "root"


# -- graphs -----------------------------------------------------------------------------------


def _root() -> dict[str, Any]:
    return {
        "id": ROOT,
        "op": "generate",
        "params": {"model": "sim-instant", "width": SIZE, "height": SIZE, "seed": 1},
        "inputs": {"prompt": "$inputs.prompt"},
    }


def _step(shape: str, node_id: str, upstream: str, i: int) -> dict[str, Any]:
    if shape.endswith("provider"):
        return {
            "id": node_id,
            "op": "remove_background",
            "params": {"model": "bria-rmbg"},
            "inputs": {"image": f"$nodes.{upstream}"},
        }
    return {
        "id": node_id,
        "op": "colour_correct",
        "params": {"brightness": round((i + 1) / 1000, 4)},
        "inputs": {"image": f"$nodes.{upstream}"},
    }


def graph(shape: str, width: int) -> dict[str, Any]:
    """The workflow graph of one shape with ``width`` middle nodes."""
    nodes = [_root()]
    if shape.startswith("chain"):
        previous = ROOT
        for i in range(width - 1):  # the root is the chain's first node
            nodes.append(_step(shape, f"n{i}", previous, i))
            previous = f"n{i}"
        outputs = {"last": f"$nodes.{previous}"}
    else:
        layer = [f"n{i}" for i in range(width)]
        nodes.extend(_step(shape, node, ROOT, i) for i, node in enumerate(layer))
        if shape.endswith("provider"):
            outputs = {node: f"$nodes.{node}" for node in layer}
        else:
            level = 0
            while len(layer) > 1:
                joined = []
                for j in range(0, len(layer) - 1, 2):
                    join = f"j{level}_{j // 2}"
                    nodes.append(
                        {
                            "id": join,
                            "op": "composite",
                            "params": {"x": 0, "y": 0, "opacity": 0.5},
                            "inputs": {
                                "base": f"$nodes.{layer[j]}",
                                "overlay": f"$nodes.{layer[j + 1]}",
                            },
                        }
                    )
                    joined.append(join)
                if len(layer) % 2:
                    joined.append(layer[-1])
                layer, level = joined, level + 1
            outputs = {"joined": f"$nodes.{layer[0]}"}
    return {"inputs": {"prompt": {"type": "text"}}, "nodes": nodes, "outputs": outputs}


# -- HTTP and the write side ------------------------------------------------------------------


def create_workflow(client: httpx.Client, name: str, graph: dict[str, Any]) -> str:
    """A workflow with ``graph`` as its version 1, over HTTP; its id."""
    made = client.post("/v1/workflows", json={"name": name})
    for _ in range(20):  # the API opens the workflows store on first use
        if made.status_code != 503:
            break
        time.sleep(0.5)
        made = client.post("/v1/workflows", json={"name": name})
    if made.status_code != 201:
        raise RuntimeError(f"POST /v1/workflows answered {made.status_code}: {made.text}")
    workflow_id = str(made.json()["id"])
    version = client.post(f"/v1/workflows/{workflow_id}/versions", json={"graph": graph})
    if version.status_code != 201:
        raise RuntimeError(f"POST .../versions answered {version.status_code}: {version.text}")
    return workflow_id


def start_run(client: httpx.Client, workflow_id: str, prompt: str) -> str:
    answer = client.post(f"/v1/workflows/{workflow_id}/runs", json={"inputs": {"prompt": prompt}})
    if answer.status_code != 202:
        raise RuntimeError(f"POST .../runs answered {answer.status_code}: {answer.text[:300]}")
    return str(answer.json()["id"])


def wait_run(
    c: Container, run_id: UUID, children: Sequence[ChildProcess], timeout: float = 180.0
) -> WorkflowExecution:
    """The run once it has ended (read from the event store)."""
    deadline = time.monotonic() + timeout
    while True:
        run = c.workflows.run(None, run_id)
        if run.status in RUN_TERMINAL:
            return run
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} not ended after {timeout} s: {run.status}")
        for child in children:
            child.check()
        time.sleep(0.1)


def _epoch(stamp: Any) -> float | None:
    return stamp.timestamp() if isinstance(stamp, datetime) else None


def node_times(c: Container, run_id: UUID) -> dict[str, Any]:
    """From a run's events: funded, and per node queued / started / completed (epoch s, the
    last attempt's) and its generation's id."""
    funded: float | None = None
    queued: dict[str, float] = {}
    started: dict[str, float] = {}
    completed: dict[str, float] = {}
    generations: dict[str, UUID] = {}
    cached: set[str] = set()
    for event in c.workflows.events.get(run_id):
        stamp = _epoch(getattr(event, "timestamp", None))
        if stamp is None:
            continue
        if isinstance(event, WorkflowExecution.Funded):
            funded = funded or stamp
        elif isinstance(event, WorkflowExecution.NodeQueued):
            queued[event.node] = stamp
            started.pop(event.node, None)
            if event.generation_id is not None:
                generations[event.node] = event.generation_id
        elif isinstance(event, WorkflowExecution.NodeStarted):
            started[event.node] = stamp
        elif isinstance(event, WorkflowExecution.NodeCompleted):
            completed[event.node] = stamp
            if event.node not in started:
                started[event.node] = _epoch(event.started_at) or stamp
            if event.cached:
                cached.add(event.node)
    return {
        "funded": funded,
        "queued": queued,
        "started": started,
        "completed": completed,
        "generations": generations,
        "cached": cached,
    }


def run_wall_s(c: Container, run: WorkflowExecution) -> float | None:
    """Seconds from the run's ``Requested`` event (its created_at) to its end."""
    created = _epoch(getattr(next(iter(c.workflows.events.get(run.id))), "timestamp", None))
    ended = _epoch(run.completed_at)
    return None if created is None or ended is None else ended - created


def hop_kind(shape: str, ups: Sequence[str]) -> str:
    if shape.startswith("chain"):
        return "chain"
    return "fan-out" if ups == (ROOT,) else "fan-in"


def hops(
    c: Container, shape: str, run: WorkflowExecution
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Hop seconds by kind (and ``root``: Funded -> root start), the breakdown's stage seconds,
    and how many nodes were cache hits."""
    times = node_times(c, run.id)
    found: dict[str, list[float]] = {}
    stages: dict[str, list[float]] = {}
    for node, ups in dependencies(run.graph).items():
        start = times["started"].get(node)
        if start is None:
            continue
        if not ups:
            if times["funded"] is not None:
                found.setdefault("root", []).append(start - times["funded"])
            continue
        ready = max(times["completed"][up] for up in ups)
        found.setdefault(hop_kind(shape, ups), []).append(start - ready)
        queued = times["queued"].get(node)
        if queued is None:
            continue
        stages.setdefault("completion -> queued", []).append(queued - ready)
        generation_id = times["generations"].get(node)
        if generation_id is None:
            stages.setdefault("queued -> start (local)", []).append(start - queued)
            continue
        requested = event_times(c, generation_id).get("Requested")
        if requested is not None:
            stages.setdefault("queued -> generation", []).append(requested - queued)
            stages.setdefault("generation -> NodeStarted", []).append(start - requested)
    return found, stages, len(times["cached"])


def p50_p95(values: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return percentile(ordered, 0.5) * 1000, percentile(ordered, 0.95) * 1000


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument(
        "--width", type=int, default=50, help="nodes in the chain (root included) / the fan-out"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each shape")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset")
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument(
        "--worker-timeout-ms",
        type=int,
        default=WORKER_POLL_MS,
        help=f"dramatiq_worker_timeout for the worker (default: the platform's, {WORKER_POLL_MS})",
    )
    parser.add_argument("--target-ms", type=float, default=25.0, help="hop p50 target")
    args = parser.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = sorted(set(args.shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {', '.join(SHAPES)}")
    if args.width < 2 or args.repeats < 1:
        parser.error("--width must be at least 2 and --repeats positive")
    return args


def platform(
    stack: ExitStack, args: argparse.Namespace, name: str
) -> tuple[Container, ApiProcess, list[ChildProcess], httpx.Client, str]:
    """The platform on a scratch environment, its container, and a client of the seeded user."""
    base = stack.enter_context(bench_environment(name))
    postgres = server_version(base.database_url)
    env = simulated(base, free_port())
    c = build(env.settings)
    stack.callback(c.close)
    created = seed_user(c, credits="1000000")
    api, children = start_platform(
        stack,
        env,
        worker_processes=args.worker_processes,
        worker_threads=args.worker_threads,
        worker_timeout_ms=args.worker_timeout_ms,
    )
    headers = {"Authorization": f"Bearer {created.api_key}"}
    client = stack.enter_context(httpx.Client(base_url=api.base_url, headers=headers, timeout=30))
    return c, api, children, client, postgres


def measure(
    c: Container,
    client: httpx.Client,
    children: Sequence[ChildProcess],
    args: argparse.Namespace,
    token: str,
    shape: str,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    workflow_id = create_workflow(client, f"hops {shape}", graph(shape, args.width))
    found: dict[str, list[float]] = {}
    stages: dict[str, list[float]] = {}
    cached = 0
    failed: list[str] = []
    walls: list[float] = []
    # one unmeasured run first: imports, connections and caches of every process warmed
    for repeat in range(args.repeats + 1):
        run_id = UUID(start_run(client, workflow_id, f"{token} {shape} {repeat}"))
        run = wait_run(c, run_id, children)
        if run.status != "completed":
            failed.append(f"{run_id}: {run.status} {run.error}")
            continue
        if repeat == 0:
            continue
        run_hops, run_stages, run_cached = hops(c, shape, run)
        for kind, values in run_hops.items():
            found.setdefault(kind, []).extend(values)
        for stage, values in run_stages.items():
            stages.setdefault(stage, []).extend(values)
        cached += run_cached
        wall = run_wall_s(c, run)
        if wall is not None:
            walls.append(wall)
            progress(f"  {shape} run {repeat}: {wall:.2f} s")
    return {
        "hops_ms": {
            k: dict(zip(("p50", "p95"), p50_p95(v), strict=True)) for k, v in found.items()
        },
        "hop_samples": {k: len(v) for k, v in found.items()},
        "stages_ms": {
            k: dict(zip(("p50", "p95"), p50_p95(v), strict=True)) for k, v in stages.items()
        },
        "cached_nodes": cached,
        "run_wall_s": walls,
        "failed": failed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    token = f"hops {uuid.uuid4().hex[:8]}"  # in every prompt: never a cache hit across runs
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        c, api, children, client, postgres = platform(stack, args, NAME)
        try:
            for shape in args.shapes:
                results[shape] = measure(c, client, children, args, token, shape)
        except RuntimeError:
            print(f"the API's log ends:\n{api.log_tail()}")
            raise
    return report(args, postgres, results)


def report(args: argparse.Namespace, postgres: str, results: dict[str, Any]) -> int:
    rows: list[list[Any]] = []
    for shape, result in results.items():
        for kind in ("chain", "fan-out", "fan-in", "root"):
            if kind in result["hops_ms"]:
                ms = result["hops_ms"][kind]
                label = "Funded -> root start" if kind == "root" else kind
                rows.append([shape, label, result["hop_samples"][kind], ms["p50"], ms["p95"]])
    print()
    print(
        f"hop = the latest upstream NodeCompleted -> the node's start; width {args.width}, "
        f"{args.repeats} runs per shape (after one unmeasured), worker {args.worker_processes}x"
        f"{args.worker_threads}, worker timeout {args.worker_timeout_ms} ms"
    )
    print(table(["shape", "hop", "samples", "p50 ms", "p95 ms"], rows))
    print()
    print("where a hop's time goes (p50 / p95 ms)")
    stage_rows = [
        [shape, stage, ms["p50"], ms["p95"]]
        for shape, result in results.items()
        for stage, ms in result["stages_ms"].items()
    ]
    print(table(["shape", "stage", "p50 ms", "p95 ms"], stage_rows))
    for shape, result in results.items():
        if result["cached_nodes"] or result["failed"]:
            print(f"{shape}: {result['cached_nodes']} cached nodes, failed runs {result['failed']}")
    p50s = [r["hops_ms"][k]["p50"] for r in results.values() for k in r["hops_ms"] if k != "root"]
    met = bool(p50s) and max(p50s) <= args.target_ms
    print(
        f"target hop p50 <= {args.target_ms:g} ms (every shape and kind): "
        + ("MET" if met else "NOT MET")
    )
    summary = {
        "benchmark": NAME,
        "width": args.width,
        "repeats": args.repeats,
        "hops_ms": {shape: r["hops_ms"] for shape, r in results.items()},
        "target_p50_ms": args.target_ms,
        "met": met,
    }
    print(json.dumps(summary))
    written = write_result(
        NAME,
        {
            "config": {
                "width": args.width,
                "repeats": args.repeats,
                "shapes": args.shapes,
                "worker_processes": args.worker_processes,
                "worker_threads": args.worker_threads,
                "worker_timeout_ms": args.worker_timeout_ms,
                "simulator_latency_scale": 0,
            },
            "postgres": postgres,
            "target": {"hop_p50_ms": args.target_ms, "met": met},
            "results": results,
        },
    )
    print(f"written {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
