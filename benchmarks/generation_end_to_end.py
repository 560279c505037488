"""End to end with a zero-latency simulator model and 512x512 output: completed generations per
second with two worker processes, and the platform's own overhead per generation (POST to
visible, minus the provider's time), p50 and p95, each against its floor measured in the same run.

What it measures
    The whole platform as separate processes on a scratch database and Redis namespace:
    ``pixevo simulator --latency-scale 0`` (every simulated model instant), ``pixevo api``,
    ``pixevo dispatcher``, ``pixevo projections run`` and a Dramatiq worker
    (``python -m dramatiq interfaces.worker --skip-logging --processes 2 --threads 8``), all with
    ``PIXEVO_LOG_LEVEL=WARNING`` and every provider pointed at the simulator
    (``PIXEVO_PROVIDER_<NAME>_URL``). One user has 1,000,000 credits. Requests are
    ``{"model": "sim-instant", "prompt": "<run> <n>", "params": {"width": 512, "height": 512,
    "seed": n}}``, every one distinct (the result cache never answers).

    (a) Latency, ``--sequential`` generations (default 30) one at a time: the time from sending
        ``POST /v1/generations`` to the first ``GET /v1/generations/{id}`` (polled every
        ``--poll-ms``, default 5 ms, on its own keep-alive connection) that shows ``completed``.
        Overhead = that minus the provider's time, which is read back from the simulator for
        each job (``GET /replicate/v1/predictions/{job}`` ``metrics.predict_time``; 0.000 s at
        latency scale 0, so overhead = end-to-end time). The poll adds up to one interval plus
        one GET (~1-3 ms) to each sample: the measure is slightly pessimistic. The next one is
        sent once this one's derivatives are made too (polled, untimed), so that each sample,
        like the floor, starts on an idle platform; ``--overlap`` sends it at once instead,
        while they are being made (on 2 cores their pixel work then slows the next one).
        Breakdown, from the generation's own events in the event store (their timestamps are
        taken by the process that made them, on this machine's clock): accept (POST sent ->
        ``Requested``), fund (``Requested`` -> ``Funded``/``Queued``: dispatcher, Redis, worker
        pick-up, the hold in billing), dispatch+submit (``Queued`` -> ``Submitted``: dispatcher,
        Redis, worker pick-up, the provider's create call), result (``Submitted`` ->
        ``Completed``: the provider's get, downloading the 512x512 PNG the simulator renders,
        the blob write), visible (``Completed`` -> the GET that first shows it: the projection
        runner's lag plus the poll).
    (b) Throughput: ``--burst`` generations (default 200) submitted as fast as ``--submitters``
        concurrent clients (default 16) can, then the projection's read table polled (directly,
        every 20 ms) until all of them are terminal; completed/s = burst / (last completed seen
        - first POST sent). Each repeat waits for the settlement of the previous one (nothing
        held) before it starts.

    (c) The floor, in this process with no platform, on the same generations' results: for each
        sequential sample, fetch the provider's bytes (the simulator renders the PNG again),
        decode, make what showing it needs (``pipeline.visible``: preview, thumbnail, blurhash,
        quality) and classify the preview over HTTP (``POST <classifier>/v1/classify``): its
        p50/p95 are the floor of overhead. Then the pixel work's CPU per generation
        (``visible`` + ``derivatives``, ``time.process_time``). After each burst, the pixel work
        alone (fetch, shown, classified, derived) on the burst's 200 results, in
        ``--worker-processes`` spawned processes: the throughput ceiling. Platform CPU per
        generation less the pixel work = the burst's platform CPU (api, dispatcher, projections,
        worker, postgres) per completed generation minus that pixel CPU.

    Both are measured ``--repeats`` times (default 3), interleaved; the table shows medians of
    the per-repeat p50/p95 and rates.

Command
    .venv/bin/python -m benchmarks.generation_end_to_end [--sequential 30] [--burst 200]
        [--submitters 16] [--repeats 3] [--poll-ms 5] [--worker-processes 2]
        [--worker-threads 8] [--worker-timeout-ms N] [--overlap]

    ``--worker-timeout-ms`` sets Dramatiq's ``dramatiq_worker_timeout`` environment variable for
    the worker (its idle consumer's longest back-off between Redis fetches, 1000 ms by default):
    a configuration experiment, no code change.

Targets (issue 14)
    overhead p50 <= 1.5x floor p50 and p95 <= 2x floor p95; burst completed/s >= 0.8x the pixel
    work alone; platform CPU per generation less the pixel work <= 141 ms (a third of the
    424 ms measured before).

Output: tables of medians and ``benchmarks/results/generation_end_to_end.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import httpx
import psycopg

from application.post_processing import CLASSIFIED
from benchmarks._support import (
    TERMINAL,
    ApiProcess,
    ChildProcess,
    Environment,
    HttpConnection,
    argument_parser,
    bench_environment,
    cpu_cores,
    cpu_snapshot,
    event_times,
    free_port,
    median,
    percentile,
    redacted,
    run_async,
    seed_user,
    server_version,
    simulated,
    start_platform,
    table,
    wait_terminal,
    wait_until,
    write_result,
)
from infrastructure.broker import WORKER_POLL_MS
from infrastructure.imaging.classifier import HttpClassifier
from infrastructure.imaging.pipeline import derivatives, visible
from interfaces.bootstrap import Container, build

NAME = "generation_end_to_end"
MODEL = "sim-instant"
SIZE = 512
STAGES = ("accept", "fund", "dispatch+submit", "result", "visible")
#: Platform CPU per generation (ms) before the time-to-visible work: the figure to divide by 3.
BASELINE_CPU_MS = 424.0


# -- one generation at a time -----------------------------------------------------------------


async def sequential(
    api: ApiProcess,
    api_key: str,
    run: str,
    *,
    count: int,
    first_seed: int,
    poll_s: float,
    isolated: bool = True,
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """POSTs ``count`` generations one after the other; for each, when each status was seen.
    ``isolated``: the next is sent once this one's derivatives are made too (untimed), so each
    sample starts on an idle platform, as the floor does."""
    headers = {"Authorization": f"Bearer {api_key}"}
    poster = HttpConnection("127.0.0.1", api.port, headers)
    poller = HttpConnection("127.0.0.1", api.port, headers)
    samples = []
    try:
        for i in range(count):
            n = first_seed + i
            body = json.dumps(
                {
                    "model": MODEL,
                    "prompt": f"{run} {n}",
                    "params": {"width": SIZE, "height": SIZE, "seed": n},
                }
            ).encode()
            sent_wall, sent = time.time(), time.perf_counter()
            status, answer = await poster.request("POST", "/v1/generations", body)
            accepted = time.perf_counter()
            if status != 202:
                raise RuntimeError(f"POST /v1/generations answered {status}: {answer[:300]!r}")
            generation_id = json.loads(answer)["id"]
            seen: dict[str, float] = {}
            polls = 0
            while True:
                code, data = await poller.request("GET", f"/v1/generations/{generation_id}")
                now = time.perf_counter()
                polls += 1
                if code == 200:
                    view = json.loads(data)
                    seen.setdefault(view["status"], now - sent)
                    if view["status"] in TERMINAL:
                        break
                if now - sent > timeout_s:
                    raise RuntimeError(f"generation {generation_id} not finished in {timeout_s} s")
                await asyncio.sleep(poll_s)
            if isolated and view["status"] == "completed":  # its derivatives, untimed
                while len((view.get("result") or {}).get("derivatives") or []) <= 2:
                    if time.perf_counter() - sent > timeout_s:
                        raise RuntimeError(f"generation {generation_id}: no derivatives")
                    await asyncio.sleep(poll_s)
                    code, data = await poller.request("GET", f"/v1/generations/{generation_id}")
                    view = json.loads(data) if code == 200 else view
            samples.append(
                {
                    "id": generation_id,
                    "sent_wall": sent_wall,
                    "accepted_s": accepted - sent,
                    "seen_s": seen,
                    "final": view["status"],
                    "served_from_cache": view.get("served_from_cache"),
                    "polls": polls,
                }
            )
    finally:
        await poster.close()
        await poller.close()
    return samples


def saga_marks(times: dict[str, float]) -> dict[str, float] | None:
    """The four events the stages are measured between, or ``None`` if one is missing."""
    marks = {
        "Requested": times.get("Requested"),
        "Queued": times.get("Queued", times.get("Funded")),
        "Submitted": times.get("Submitted"),
        "Completed": times.get("Completed"),
    }
    found = {k: v for k, v in marks.items() if v is not None}
    return found if len(found) == len(marks) else None


def provider_seconds(c: Container, sim_url: str, generation_id: UUID) -> float | None:
    """The simulator's own job time for this generation (``metrics.predict_time``)."""
    job_id = c.generations.generation(None, generation_id).job_id
    if not job_id:
        return None
    answer = httpx.get(
        f"{sim_url}/replicate/v1/predictions/{job_id}",
        headers={"Authorization": "Bearer bench"},
        timeout=5,
    )
    if answer.status_code != 200:
        return None
    return float((answer.json().get("metrics") or {}).get("predict_time", 0.0))


def file_fetch_seconds(c: Container, sim_url: str, samples: list[dict[str, Any]]) -> list[float]:
    """Times this process takes to GET each completed job's PNG from the simulator again.

    The simulator renders the picture when its file is fetched (pyvips, then PNG encoding; a
    noisy 512x512 PNG is ~650 KB), which a real provider does while the job runs: this is
    provider-side work that ``predict_time`` does not count, so it lands in the overhead.
    """
    seconds = []
    with httpx.Client(timeout=10) as client:
        for sample in samples:
            if sample["final"] != "completed":
                continue
            job_id = c.generations.generation(None, UUID(sample["id"])).job_id
            if not job_id:
                continue
            started = time.perf_counter()
            answer = client.get(f"{sim_url}/files/{job_id}.png")
            if answer.status_code == 200:
                seconds.append(time.perf_counter() - started)
    return sorted(seconds)


def analyse(
    c: Container, sim_url: str, samples: list[dict[str, Any]]
) -> tuple[list[float], dict[str, list[float]], list[float]]:
    """(overheads s, stage durations s by stage, provider times s) of completed samples."""
    overheads: list[float] = []
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    providers: list[float] = []
    for sample in samples:
        if sample["final"] != "completed":
            continue
        generation_id = UUID(sample["id"])
        provider = provider_seconds(c, sim_url, generation_id) or 0.0
        providers.append(provider)
        total = sample["seen_s"]["completed"]
        overheads.append(total - provider)
        t = event_times(c, generation_id)
        sent = sample["sent_wall"]
        marks = saga_marks(t)
        if marks is None:
            continue
        stages["accept"].append(marks["Requested"] - sent)
        stages["fund"].append(marks["Queued"] - marks["Requested"])
        stages["dispatch+submit"].append(marks["Submitted"] - marks["Queued"])
        stages["result"].append(marks["Completed"] - marks["Submitted"])
        stages["visible"].append(sent + total - marks["Completed"])
        sample["provider_s"] = provider
        sample["events"] = {k: v - sent for k, v in t.items()}
    return overheads, stages, providers


def burst_stages(c: Container, ids: list[str]) -> dict[str, dict[str, float]]:
    """p50/p95 ms of each event-to-event stage over a burst's generations."""
    stages: dict[str, list[float]] = {"fund": [], "dispatch+submit": [], "result": [], "total": []}
    for generation_id in ids:
        t = saga_marks(event_times(c, UUID(generation_id)))
        if t is None:
            continue
        stages["fund"].append(t["Queued"] - t["Requested"])
        stages["dispatch+submit"].append(t["Submitted"] - t["Queued"])
        stages["result"].append(t["Completed"] - t["Submitted"])
        stages["total"].append(t["Completed"] - t["Requested"])
    return {
        name: {
            "p50": percentile(sorted(values), 0.5) * 1000,
            "p95": percentile(sorted(values), 0.95) * 1000,
        }
        for name, values in stages.items()
    }


# -- the floor: the same work in this process, no platform -----------------------------------


def job_file_urls(c: Container, sim_url: str, ids: Sequence[str]) -> list[str]:
    """The simulator's URL of each generation's result (it renders the PNG when fetched)."""
    urls = []
    for generation_id in ids:
        job_id = c.generations.generation(None, UUID(generation_id)).job_id
        if job_id:
            urls.append(f"{sim_url}/files/{job_id}.png")
    return urls


def shown_in_process(
    client: httpx.Client, classifier: HttpClassifier, url: str
) -> tuple[float, bytes]:
    """The floor of one generation's time to visible: fetch the provider's bytes, decode, make
    what showing it needs (preview, thumbnail, blurhash, quality), classify the preview over
    HTTP. (seconds, the bytes)."""
    started = time.perf_counter()
    data = client.get(url).raise_for_status().content
    shown = visible(data)
    judged = next(a for a in shown.artefacts if a.kind in CLASSIFIED)
    classifier.classify(judged.data, judged.media_type)
    return time.perf_counter() - started, data


def floor_latencies(
    c: Container, sim_url: str, samples: list[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """(floor seconds of each completed sample, sorted; the pixel work's CPU seconds of each
    generation: what is shown plus its derivatives, as the worker makes them)."""
    urls = job_file_urls(c, sim_url, [s["id"] for s in samples if s["final"] == "completed"])
    classifier = HttpClassifier(c.settings.classifier())
    floors, pixel_cpu = [], []
    try:
        with httpx.Client(timeout=10) as client:
            for url in urls:
                seconds, data = shown_in_process(client, classifier, url)
                floors.append(seconds)
                cpu = time.process_time()
                visible(data)
                derivatives(data, "png")
                pixel_cpu.append(time.process_time() - cpu)
    finally:
        classifier.close()
    return sorted(floors), sorted(pixel_cpu)


_process_state: dict[str, Any] = {}


def _pixel_work(url: str, classifier_url: str) -> None:
    """One generation's whole pixel work in a pool process (shown, classified, derived)."""
    if "client" not in _process_state:
        _process_state["client"] = httpx.Client(timeout=10)
        _process_state["classifier"] = HttpClassifier(classifier_url)
    _, data = shown_in_process(_process_state["client"], _process_state["classifier"], url)
    derivatives(data, "png")


def _ready() -> None:
    """Imports done: a pool process is warm."""


def pipeline_throughput(c: Container, urls: list[str], processes: int) -> float:
    """Generations per second through the pixel work alone, ``processes`` at a time (the
    worker's process count), on the burst's own results: the ceiling the platform is held to."""
    context = multiprocessing.get_context("spawn")  # not a fork of a process with live pools
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        for warm in [pool.submit(_ready) for _ in range(processes)]:
            warm.result()
        started = time.perf_counter()
        for done in [pool.submit(_pixel_work, url, c.settings.classifier()) for url in urls]:
            done.result()
        return len(urls) / (time.perf_counter() - started)


# -- a burst ----------------------------------------------------------------------------------


async def burst(
    api: ApiProcess, api_key: str, run: str, *, count: int, first_seed: int, submitters: int
) -> tuple[float, float, list[str]]:
    """POSTs ``count`` generations from ``submitters`` clients; (first sent, last 202, ids)."""
    headers = {"Authorization": f"Bearer {api_key}"}
    ids: list[str] = []
    queue = list(range(first_seed, first_seed + count))
    queue.reverse()
    first = time.perf_counter()

    async def submitter() -> None:
        conn = HttpConnection("127.0.0.1", api.port, headers)
        try:
            while queue:
                n = queue.pop()
                body = json.dumps(
                    {
                        "model": MODEL,
                        "prompt": f"{run} {n}",
                        "params": {"width": SIZE, "height": SIZE, "seed": n},
                    }
                ).encode()
                status, answer = await conn.request("POST", "/v1/generations", body)
                if status != 202:
                    raise RuntimeError(f"POST /v1/generations answered {status}: {answer[:300]!r}")
                ids.append(json.loads(answer)["id"])
        finally:
            await conn.close()

    await asyncio.gather(*(submitter() for _ in range(submitters)))
    return first, time.perf_counter(), ids


def wait_settled(api: ApiProcess, api_key: str, timeout: float = 60.0) -> None:
    """Until the user's ledger shows nothing held (every settlement done and projected)."""
    with httpx.Client(base_url=api.base_url, timeout=5) as client:

        def settled() -> bool:
            answer = client.get("/v1/credits", headers={"Authorization": f"Bearer {api_key}"})
            return answer.status_code == 200 and float(answer.json()["held"]) == 0.0

        wait_until(settled, timeout=timeout, interval=0.05)


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--sequential", type=int, default=30, help="latency samples per repeat")
    parser.add_argument("--burst", type=int, default=200, help="generations per throughput run")
    parser.add_argument("--submitters", type=int, default=16, help="concurrent burst clients")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--poll-ms", type=float, default=5.0, help="GET poll interval")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured generations first")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="send the next sequential generation as soon as one is visible, while its "
        "derivatives are still being made (default: once they are, untimed)",
    )
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument(
        "--worker-timeout-ms",
        type=int,
        default=WORKER_POLL_MS,
        help=f"dramatiq_worker_timeout for the worker (default: the platform's, "
        f"{WORKER_POLL_MS} ms; Dramatiq's own is 1000)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.sequential < 1 or args.burst < 1 or args.submitters < 1:
        parser.error("--repeats, --sequential, --burst and --submitters must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = f"e2e {uuid.uuid4().hex[:8]}"  # in every prompt: never a cache hit, across runs too
    with bench_environment(NAME) as base, ExitStack() as stack:
        args.postgres_version = server_version(base.database_url)
        env = simulated(base, free_port())
        sim_url = f"http://127.0.0.1:{env.settings.simulator_port}"
        c = build(env.settings)
        stack.callback(c.close)
        created = seed_user(c, credits="1000000", projections=("ledger", "generations"))
        print(
            f"{NAME}: PostgreSQL {args.postgres_version} at "
            f"{redacted(env.database_url)}; Redis namespace {env.settings.redis_namespace}; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        started = time.perf_counter()
        api, children = start_platform(
            stack,
            env,
            worker_processes=args.worker_processes,
            worker_threads=args.worker_threads,
            worker_timeout_ms=args.worker_timeout_ms,
            api_workers=args.api_workers,
        )
        print(
            f"platform up in {time.perf_counter() - started:.1f} s: simulator {sim_url} "
            f"(latency scale 0), api {api.base_url}, dispatcher, projections, worker "
            f"--processes {args.worker_processes} --threads {args.worker_threads}"
            + (
                f" (dramatiq_worker_timeout={args.worker_timeout_ms})"
                if args.worker_timeout_ms is not None
                else ""
            )
        )
        return measure(args, c, api, sim_url, children, created.api_key, run, env)


def measure(
    args: argparse.Namespace,
    c: Container,
    api: ApiProcess,
    sim_url: str,
    children: list[ChildProcess],
    api_key: str,
    run: str,
    env: Environment,
) -> int:
    with psycopg.connect(env.database_url, autocommit=True) as conn:
        return _measure(args, c, api, sim_url, children, api_key, run, env, conn)


def _measure(
    args: argparse.Namespace,
    c: Container,
    api: ApiProcess,
    sim_url: str,
    children: list[ChildProcess],
    api_key: str,
    run: str,
    env: Environment,
    conn: psycopg.Connection[Any],
) -> int:
    poll_s = args.poll_ms / 1000
    seed = 1
    warm = run_async(
        sequential(api, api_key, f"{run} warm", count=args.warmup, first_seed=seed, poll_s=poll_s)
    )
    seed += args.warmup
    finals = {s["final"] for s in warm}
    if finals != {"completed"}:
        raise RuntimeError(f"warm-up generations ended {finals}: see the logs in {env.data_dir}")
    print(f"warm-up: {args.warmup} generations completed")

    repeats: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        wait_settled(api, api_key)
        samples = run_async(
            sequential(
                api,
                api_key,
                run,
                count=args.sequential,
                first_seed=seed,
                poll_s=poll_s,
                isolated=not args.overlap,
            )
        )
        seed += args.sequential
        overheads, stages, providers = analyse(c, sim_url, samples)
        overheads.sort()
        floors, pixel_cpu = floor_latencies(c, sim_url, samples)
        wait_settled(api, api_key)
        fetches = file_fetch_seconds(c, sim_url, samples)
        cpu_before = cpu_snapshot(api, children)
        first, submitted, ids = run_async(
            burst(
                api,
                api_key,
                run,
                count=args.burst,
                first_seed=seed,
                submitters=args.submitters,
            )
        )
        seed += args.burst
        finished, counts, connections = wait_terminal(conn, ids, children)
        elapsed = finished - first
        cores = cpu_cores(cpu_before, cpu_snapshot(api, children), elapsed)
        in_burst = burst_stages(c, ids)
        platform_cores = sum(v for k, v in cores.items() if k != "simulator")
        done_count = max(1, counts.get("completed", 0))
        floor_rate = pipeline_throughput(c, job_file_urls(c, sim_url, ids), args.worker_processes)
        platform_cpu_ms = platform_cores * elapsed / done_count * 1000
        pixel_cpu_ms = percentile(pixel_cpu, 0.5) * 1000
        result = {
            "overhead_p50_ms": percentile(overheads, 0.50) * 1000,
            "overhead_p95_ms": percentile(overheads, 0.95) * 1000,
            "floor_p50_ms": percentile(floors, 0.50) * 1000,
            "floor_p95_ms": percentile(floors, 0.95) * 1000,
            "floor_completed_per_s": floor_rate,
            "pixel_cpu_ms_per_generation": pixel_cpu_ms,
            "platform_cpu_ms_less_pixels": platform_cpu_ms - pixel_cpu_ms,
            "overhead_max_ms": (overheads[-1] if overheads else float("nan")) * 1000,
            "completed_sequential": len(overheads),
            "not_completed_sequential": len(samples) - len(overheads),
            "provider_s_max": max(providers) if providers else None,
            "served_from_cache": sum(1 for s in samples if s["served_from_cache"]),
            "simulator_file_fetch_p50_ms": percentile(fetches, 0.5) * 1000,
            "stages_p50_ms": {k: percentile(sorted(v), 0.5) * 1000 for k, v in stages.items()},
            "stages_p95_ms": {k: percentile(sorted(v), 0.95) * 1000 for k, v in stages.items()},
            "first_seen_p50_ms": {
                status: percentile(
                    sorted(s["seen_s"][status] for s in samples if status in s["seen_s"]), 0.5
                )
                * 1000
                for status in ("requested", "funded", "queued", "running", "completed")
            },
            "burst": args.burst,
            "burst_submit_s": submitted - first,
            "burst_all_terminal_s": elapsed,
            "completed_per_s": counts.get("completed", 0) / elapsed,
            "burst_statuses": counts,
            "burst_cpu_cores": cores,
            "burst_peak_connections": connections,
            "platform_cpu_ms_per_generation": platform_cpu_ms,
            "simulator_cpu_ms_per_generation": cores["simulator"] * elapsed / done_count * 1000,
            "burst_stages_ms": in_burst,
            "samples": samples,
        }
        repeats.append(result)
        print(
            f"  repeat {repeat + 1}/{args.repeats}: overhead p50 {result['overhead_p50_ms']:6.1f} "
            f"ms p95 {result['overhead_p95_ms']:6.1f} ms, floor p50 {result['floor_p50_ms']:.1f} "
            f"p95 {result['floor_p95_ms']:.1f} ms ({len(overheads)}/{len(samples)} "
            f"completed, provider time max {result['provider_s_max']} s) | burst {args.burst}: "
            f"submitted in {result['burst_submit_s']:.2f} s, all done in {elapsed:.2f} s -> "
            f"{result['completed_per_s']:.1f} completed/s {counts}, peak {connections} "
            f"PostgreSQL connections; the pixel work alone {floor_rate:.1f}/s"
        )
        print(
            "    burst stages p50/p95 ms (Requested -> Queued -> Submitted -> Completed): "
            + ", ".join(f"{k} {v['p50']:.0f}/{v['p95']:.0f}" for k, v in in_burst.items())
        )
        print(
            "    burst cpu (cores): "
            + ", ".join(f"{name} {value:.2f}" for name, value in cores.items())
        )

    p50 = median([r["overhead_p50_ms"] for r in repeats])
    p95 = median([r["overhead_p95_ms"] for r in repeats])
    floor50 = median([r["floor_p50_ms"] for r in repeats])
    floor95 = median([r["floor_p95_ms"] for r in repeats])
    rate = median([r["completed_per_s"] for r in repeats])
    floor_rate = median([r["floor_completed_per_s"] for r in repeats])
    cpu_less_pixels = median([r["platform_cpu_ms_less_pixels"] for r in repeats])
    fetch_p50 = median([r["simulator_file_fetch_p50_ms"] for r in repeats])
    print()
    print(
        f"medians of {args.repeats} repeats: {args.sequential} sequential generations each "
        f"(poll {args.poll_ms:g} ms), bursts of {args.burst} from {args.submitters} clients; "
        f"{MODEL} {SIZE}x{SIZE}, worker --processes {args.worker_processes} "
        f"--threads {args.worker_threads}"
    )
    print(
        table(
            ["measure", "value"],
            [
                ["overhead p50 ms (POST sent -> GET shows completed, - provider)", p50],
                ["overhead p95 ms", p95],
                ["floor p50 ms (fetch, decode, preview, classify; in this process)", floor50],
                ["floor p95 ms", floor95],
                [
                    "  of the floor, p50: the simulator renders + serves the PNG (re-fetched)",
                    fetch_p50,
                ],
                ["overhead p50 / floor p50", p50 / floor50],
                ["overhead p95 / floor p95", p95 / floor95],
                ["completed generations per s (burst)", rate],
                [f"the pixel work alone per s ({args.worker_processes} processes)", floor_rate],
                ["completed per s / pixel work per s", rate / floor_rate],
                [
                    "burst: platform CPU ms per generation (api, dispatcher, projections, "
                    "worker, postgres)",
                    median([r["platform_cpu_ms_per_generation"] for r in repeats]),
                ],
                [
                    "  of it, the pixel work (shown + derivatives, CPU ms, in this process)",
                    median([r["pixel_cpu_ms_per_generation"] for r in repeats]),
                ],
                ["  platform CPU ms per generation less the pixel work", cpu_less_pixels],
                [
                    "burst: simulator CPU ms per generation",
                    median([r["simulator_cpu_ms_per_generation"] for r in repeats]),
                ],
                ["burst: all submitted after s", median([r["burst_submit_s"] for r in repeats])],
                [
                    "burst: all completed after s",
                    median([r["burst_all_terminal_s"] for r in repeats]),
                ],
            ],
        )
    )
    print()
    print("where the time goes, sequential (from each generation's event timestamps)")
    stage_rows = [
        [
            stage,
            median([r["stages_p50_ms"][stage] for r in repeats]),
            median([r["stages_p95_ms"][stage] for r in repeats]),
        ]
        for stage in STAGES
    ]
    print(table(["stage", "p50 ms", "p95 ms"], stage_rows))
    seen = {
        status: median([r["first_seen_p50_ms"][status] for r in repeats])
        for status in repeats[0]["first_seen_p50_ms"]
    }
    print(
        "first GET showing each status, p50 ms after POST sent (a status the projection "
        "passed between two polls is not seen): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seen.items())
    )
    print(
        "stages: accept = POST sent -> Requested; fund = Requested -> Queued; dispatch+submit = "
        "Queued -> Submitted; result = Submitted -> Completed; visible = Completed -> the GET "
        "that shows it (projection lag + poll). Each stage's p50 is separate, so they need not "
        "sum to the total's."
    )
    provider_max = max((r["provider_s_max"] or 0.0) for r in repeats)
    print(
        f"provider time (simulator metrics.predict_time) max {provider_max:.3f} s; the poll "
        f"({args.poll_ms:g} ms + one GET) inflates each sample slightly."
    )
    targets = {
        "overhead p50 <= 1.5x floor p50": p50 <= 1.5 * floor50,
        "overhead p95 <= 2x floor p95": p95 <= 2 * floor95,
        "completed/s >= 0.8x the pixel work alone": rate >= 0.8 * floor_rate,
        f"platform CPU less pixel work <= {BASELINE_CPU_MS / 3:.0f} ms "
        f"(a third of {BASELINE_CPU_MS:g})": cpu_less_pixels <= BASELINE_CPU_MS / 3,
    }
    names = list(repeats[0]["burst_cpu_cores"])
    print(
        "burst CPU, cores busy from the first POST to the last completion (median; postgres "
        "sums every postgres process on the machine; this machine has "
        f"{os.cpu_count()} cores): "
        + ", ".join(
            f"{name} {median([r['burst_cpu_cores'][name] for r in repeats]):.2f}" for name in names
        )
    )
    for name, met in targets.items():
        print(f"target {name}: {'MET' if met else 'NOT MET'}")
    written = write_result(
        NAME,
        {
            "config": {
                "sequential": args.sequential,
                "burst": args.burst,
                "submitters": args.submitters,
                "repeats": args.repeats,
                "poll_ms": args.poll_ms,
                "warmup": args.warmup,
                "overlap": args.overlap,
                "worker_processes": args.worker_processes,
                "worker_threads": args.worker_threads,
                "worker_timeout_ms": args.worker_timeout_ms,
                "api_workers": args.api_workers,
                "model": MODEL,
                "size": SIZE,
                "simulator_latency_scale": 0,
            },
            "postgres": args.postgres_version,
            "targets": targets,
            "overhead_p50_ms_median": p50,
            "overhead_p95_ms_median": p95,
            "floor_p50_ms_median": floor50,
            "floor_p95_ms_median": floor95,
            "completed_per_s_median": rate,
            "floor_completed_per_s_median": floor_rate,
            "platform_cpu_ms_less_pixels_median": cpu_less_pixels,
            "simulator_file_fetch_p50_ms_median": fetch_p50,
            "first_seen_p50_ms_median": seen,
            "stages_ms_median": {row[0]: {"p50": row[1], "p95": row[2]} for row in stage_rows},
            "repeats": repeats,
        },
    )
    print(f"written {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
