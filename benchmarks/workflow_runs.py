"""Concurrent workflow runs: ``--runs`` runs (default 200) of a 5-node DAG submitted at once from
several client threads over HTTP: runs completed per second, and the run overhead (run wall time
minus the critical path's provider time), p50 and p95.

What it measures
    The platform as ``benchmarks.workflow_hops`` starts it (simulator at latency scale 0, API,
    dispatcher, projections, a worker with ``--worker-processes`` x ``--worker-threads``). One
    user with 1,000,000 credits creates one workflow over HTTP:

        gen (generate, sim-instant 64x64, the run's prompt)
          ├─▶ cut  (remove_background, bria-rmbg)  ─┐
          └─▶ gray (grayscale)                      ├─▶ comp (composite) ─▶ small (resize 32)
                                                    ┘
    then ``--clients`` threads (default 8), each with its own keep-alive connection, POST
    ``/v1/workflows/{id}/runs`` with distinct prompts until ``--runs`` are submitted. The
    run's ``Ended`` events are followed in the workflows notification log until all have ended.

    Runs completed per second = runs / (last ``Ended`` - first POST sent).
    Run overhead = ``Ended`` - ``Requested`` (the run's created_at -> completed_at) minus the
    provider time along the critical path: the longest path through the graph where each
    provider node weighs its generation's ``Submitted`` -> ``Produced`` time (0 ms or so at
    latency scale 0) and each local node weighs nothing (its work counts as overhead).

Command
    .venv/bin/python -m benchmarks.workflow_runs [--runs 200] [--clients 8]
        [--worker-processes 2] [--worker-threads 8] [--worker-timeout-ms N]

Output: a table, a JSON line and ``benchmarks/results/workflow_runs.json``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import httpx

from application.logs import read_after, topic_of
from benchmarks._support import (
    ApiProcess,
    ChildProcess,
    argument_parser,
    event_times,
    median,
    percentile,
    table,
    write_result,
)
from benchmarks.workflow_hops import (
    create_workflow,
    node_times,
    platform,
    run_wall_s,
    start_run,
)
from domain.workflow import PROVIDER_OPS, WorkflowExecution, dependencies
from infrastructure.broker import WORKER_POLL_MS
from interfaces.bootstrap import Container

NAME = "workflow_runs"
GRAPH: dict[str, Any] = {
    "inputs": {"prompt": {"type": "text"}},
    "nodes": [
        {
            "id": "gen",
            "op": "generate",
            "params": {"model": "sim-instant", "width": 64, "height": 64, "seed": 1},
            "inputs": {"prompt": "$inputs.prompt"},
        },
        {
            "id": "cut",
            "op": "remove_background",
            "params": {"model": "bria-rmbg"},
            "inputs": {"image": "$nodes.gen"},
        },
        {"id": "gray", "op": "grayscale", "inputs": {"image": "$nodes.gen"}},
        {
            "id": "comp",
            "op": "composite",
            "params": {"x": 0, "y": 0, "opacity": 0.5},
            "inputs": {"base": "$nodes.gray", "overlay": "$nodes.cut"},
        },
        {
            "id": "small",
            "op": "resize",
            "params": {"width": 32},
            "inputs": {"image": "$nodes.comp"},
        },
    ],
    "outputs": {"final": "$nodes.small"},
}


def submit(
    api: ApiProcess, api_key: str, workflow_id: str, prompts: list[str], clients: int
) -> tuple[float, list[str]]:
    """POSTs one run per prompt from ``clients`` threads; (epoch s of the first POST, ids)."""
    pending = list(reversed(prompts))
    lock = threading.Lock()
    ids: list[str] = []
    first = time.time()

    def client() -> None:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=api.base_url, headers=headers, timeout=60) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    prompt = pending.pop()
                run_id = start_run(http, workflow_id, prompt)
                with lock:
                    ids.append(run_id)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return first, ids


def wait_ended(
    c: Container, ids: list[str], children: Sequence[ChildProcess], timeout: float = 300.0
) -> None:
    """Follows the workflows log until each of the runs has an ``Ended`` event."""
    wanted = {UUID(i) for i in ids}
    ended: set[UUID] = set()
    topic = topic_of(WorkflowExecution.Ended)
    recorder = c.workflows.recorder
    position = 0
    deadline = time.monotonic() + timeout
    while len(ended) < len(wanted):
        batch, position = read_after(recorder, position, 500, topics=[topic])
        for notification in batch:
            if notification.originator_id in wanted:
                ended.add(UUID(str(notification.originator_id)))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(ended)}/{len(wanted)} runs ended after {timeout} s")
        for child in children:
            child.check()
        if not batch:
            time.sleep(0.1)


def critical_provider_s(c: Container, run: WorkflowExecution, times: dict[str, Any]) -> float:
    """The longest path's provider time: each provider node's Submitted -> Produced."""
    weight: dict[str, float] = {}
    for node, state in run.nodes.items():
        generation_id = times["generations"].get(node)
        if state["op"] not in PROVIDER_OPS or generation_id is None:
            weight[node] = 0.0
            continue
        marks = event_times(c, generation_id)
        submitted, produced = marks.get("Submitted"), marks.get("Produced")
        weight[node] = produced - submitted if submitted and produced else 0.0
    longest: dict[str, float] = {}
    for node, ups in dependencies(run.graph).items():  # graph order is topological
        longest[node] = weight[node] + max((longest[up] for up in ups), default=0.0)
    return max(longest.values(), default=0.0)


def analyse(c: Container, ids: list[str]) -> dict[str, Any]:
    overheads, walls, providers, ends = [], [], [], []
    statuses: dict[str, int] = {}
    for run_id in ids:
        run = c.workflows.run(None, UUID(run_id))
        statuses[run.status] = statuses.get(run.status, 0) + 1
        wall = run_wall_s(c, run)
        if run.status != "completed" or run.completed_at is None or wall is None:
            continue
        provider = critical_provider_s(c, run, node_times(c, run.id))
        walls.append(wall)
        providers.append(provider)
        overheads.append(wall - provider)
        ends.append(run.completed_at.timestamp())
    return {
        "statuses": statuses,
        "wall_s": sorted(walls),
        "provider_s": sorted(providers),
        "overhead_s": sorted(overheads),
        "last_end": max(ends, default=float("nan")),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--runs", type=int, default=200, help="runs submitted at once")
    parser.add_argument("--clients", type=int, default=8, help="submitting threads")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs first")
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument(
        "--worker-timeout-ms",
        type=int,
        default=WORKER_POLL_MS,
        help=f"dramatiq_worker_timeout for the worker (default: the platform's, {WORKER_POLL_MS})",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.clients < 1 or args.warmup < 0:
        parser.error("--runs and --clients must be positive, --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    token = f"runs {uuid.uuid4().hex[:8]}"  # in every prompt: never a cache hit across runs
    with ExitStack() as stack:
        c, api, children, client, postgres = platform(stack, args, NAME)
        api_key = str(client.headers["Authorization"]).removeprefix("Bearer ")
        workflow_id = create_workflow(client, "five nodes", GRAPH)
        if args.warmup:
            _, warm = submit(
                api, api_key, workflow_id, [f"{token} warm {i}" for i in range(args.warmup)], 1
            )
            wait_ended(c, warm, children)
        prompts = [f"{token} {i}" for i in range(args.runs)]
        first, ids = submit(api, api_key, workflow_id, prompts, args.clients)
        submitted = time.time()
        wait_ended(c, ids, children)
        result = analyse(c, ids)
    span = result["last_end"] - first
    completed = result["statuses"].get("completed", 0)
    rate = completed / span if span > 0 else float("nan")
    overhead, wall = result["overhead_s"], result["wall_s"]
    rows = [
        ["runs submitted (5 nodes each)", args.runs],
        ["runs completed", completed],
        ["all submitted after s", submitted - first],
        ["all ended after s", span],
        ["runs completed per s", rate],
        ["run wall time p50 ms", percentile(wall, 0.5) * 1000],
        ["run wall time p95 ms", percentile(wall, 0.95) * 1000],
        ["critical-path provider time p50 ms", percentile(result["provider_s"], 0.5) * 1000],
        ["run overhead p50 ms", percentile(overhead, 0.5) * 1000],
        ["run overhead p95 ms", percentile(overhead, 0.95) * 1000],
    ]
    print()
    print(
        f"{args.runs} runs from {args.clients} client threads at once; worker "
        f"{args.worker_processes}x{args.worker_threads}, worker timeout {args.worker_timeout_ms} ms"
    )
    print(table(["measure", "value"], rows))
    if set(result["statuses"]) != {"completed"}:
        print(f"run statuses: {result['statuses']}")
    summary = {
        "benchmark": NAME,
        "runs": args.runs,
        "completed": completed,
        "runs_per_s": rate,
        "overhead_p50_ms": percentile(overhead, 0.5) * 1000,
        "overhead_p95_ms": percentile(overhead, 0.95) * 1000,
        "wall_p95_ms": percentile(wall, 0.95) * 1000,
    }
    print(json.dumps(summary))
    written = write_result(
        NAME,
        {
            "config": {
                "runs": args.runs,
                "clients": args.clients,
                "warmup": args.warmup,
                "worker_processes": args.worker_processes,
                "worker_threads": args.worker_threads,
                "worker_timeout_ms": args.worker_timeout_ms,
                "simulator_latency_scale": 0,
                "graph": GRAPH,
            },
            "postgres": postgres,
            **summary,
            "statuses": result["statuses"],
            "submit_s": submitted - first,
            "span_s": span,
            "provider_p50_ms": median(result["provider_s"]) * 1000,
        },
    )
    print(f"written {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
