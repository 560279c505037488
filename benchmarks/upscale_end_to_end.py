"""An upscale of an uploaded 1024x1024 image end to end, against a text-to-image generation in
the same run: the platform's overhead per generation (POST to completed, minus the provider's
own time), p50 and p95.

What it measures
    The whole platform as separate processes on a scratch database and Redis namespace, as
    ``benchmarks.generation_end_to_end`` starts it: ``pixevo simulator --latency-scale 0``,
    ``pixevo api``, ``pixevo dispatcher``, ``pixevo projections run`` and a Dramatiq worker
    (``--processes 2 --threads 8``), logging at WARNING. One user has 1,000,000 credits and
    uploads one photo-like 1024x1024 PNG (``_support.photo_like_png``, ~2.5 MB) with
    ``POST /v1/uploads`` (its time is reported apart).
    Then ``--count`` pairs (default 20), one request at a time, alternating:
      upscale        ``{"model": "real-esrgan", "params": {"image": "upload:<id>", "scale": 2}}``
                     (predictions wire style: the simulator fetches the input through a signed
                     link to the API, resizes it to 2048x2048 and serves the PNG; the pipeline
                     then makes the artefacts of a 4-megapixel result)
      text-to-image  ``{"model": "sim-instant", "prompt": "<run> <n>", "params": {"width":
                     1024, "height": 1024, "seed": n}}`` (distinct: never a cache hit)
    Each sample is the time from sending ``POST /v1/generations`` to the first ``GET`` (polled
    every ``--poll-ms``, default 5 ms) that shows ``completed``, less the simulator's
    ``metrics.predict_time`` for the job (0 at latency scale 0). That overhead includes work a
    real provider does on its own side that the simulator does when its file is fetched
    (rendering or resizing, PNG encoding): it is re-measured alone (``GET /files/{job}.png``
    once more) and shown beside it. Stages come from each generation's event timestamps.

Command
    .venv/bin/python -m benchmarks.upscale_end_to_end [--count 20] [--warmup 2] [--poll-ms 5]
        [--worker-processes 2] [--worker-threads 8]

Output: a table of p50/p95 per kind and ``benchmarks/results/upscale_end_to_end.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import httpx

from benchmarks._support import (
    TERMINAL,
    ApiProcess,
    HttpConnection,
    argument_parser,
    bench_environment,
    event_times,
    free_port,
    percentile,
    photo_like_png,
    run_async,
    seed_user,
    server_version,
    simulated,
    start_platform,
    table,
    write_result,
)
from benchmarks.generation_end_to_end import file_fetch_seconds, provider_seconds, saga_marks
from interfaces.bootstrap import Container, build

NAME = "upscale_end_to_end"
KINDS = ("upscale", "text-to-image")
STAGES = ("fund", "dispatch+submit", "result")


def body(kind: str, upload_id: str, run: str, n: int) -> bytes:
    if kind == "upscale":
        ask: dict[str, Any] = {
            "model": "real-esrgan",
            "params": {"image": f"upload:{upload_id}", "scale": 2},
        }
    else:
        size = {"width": 1024, "height": 1024, "seed": n}
        ask = {"model": "sim-instant", "prompt": f"{run} {n}", "params": size}
    return json.dumps(ask).encode()


async def one(
    api: ApiProcess, headers: dict[str, str], poller: HttpConnection, request: bytes, poll_s: float
) -> dict[str, Any]:
    """POSTs one generation and polls it until it ends: its id, end status and seconds.

    Each POST has a connection of its own: the poster would idle for a whole generation
    between two, and the server closes idle keep-alive connections (uvicorn: after 5 s)."""
    poster = HttpConnection("127.0.0.1", api.port, headers)
    sent = time.perf_counter()
    try:
        status, answer = await poster.request("POST", "/v1/generations", request)
    finally:
        await poster.close()
    if status != 202:
        raise RuntimeError(f"POST /v1/generations answered {status}: {answer[:300]!r}")
    generation_id = json.loads(answer)["id"]
    while True:
        code, data = await poller.request("GET", f"/v1/generations/{generation_id}")
        elapsed = time.perf_counter() - sent
        view = json.loads(data) if code == 200 else {}
        if view.get("status") in TERMINAL:
            return {"id": generation_id, "final": view["status"], "total_s": elapsed}
        if elapsed > 120:
            raise RuntimeError(f"generation {generation_id} not finished in 120 s: {view}")
        await asyncio.sleep(poll_s)


async def pairs(
    api: ApiProcess, api_key: str, upload_id: str, run: str, count: int, poll_s: float
) -> dict[str, list[dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {api_key}"}
    poller = HttpConnection("127.0.0.1", api.port, headers)
    samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    try:
        for n in range(count):
            for kind in KINDS:
                request = body(kind, upload_id, run, n)
                samples[kind].append(await one(api, headers, poller, request, poll_s))
    finally:
        await poller.close()
    return samples


def upload(api: ApiProcess, api_key: str, data: bytes) -> tuple[str, float]:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "image/png"}
    started = time.perf_counter()
    answer = httpx.post(f"{api.base_url}/v1/uploads", content=data, headers=headers, timeout=60)
    elapsed = time.perf_counter() - started
    if answer.status_code != 201:
        raise RuntimeError(f"POST /v1/uploads answered {answer.status_code}: {answer.text}")
    return str(answer.json()["id"]), elapsed


def analyse(c: Container, sim_url: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p95 of the overhead, of each stage and of the simulator's re-fetched file."""
    done = [s for s in samples if s["final"] == "completed"]
    overheads = sorted(
        s["total_s"] - (provider_seconds(c, sim_url, UUID(s["id"])) or 0.0) for s in done
    )
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for sample in done:
        marks = saga_marks(event_times(c, UUID(sample["id"])))
        if marks is None:
            continue
        stages["fund"].append(marks["Queued"] - marks["Requested"])
        stages["dispatch+submit"].append(marks["Submitted"] - marks["Queued"])
        stages["result"].append(marks["Completed"] - marks["Submitted"])
    fetches = file_fetch_seconds(c, sim_url, done)
    return {
        "completed": len(done),
        "of": len(samples),
        "overhead_p50_ms": percentile(overheads, 0.5) * 1000,
        "overhead_p95_ms": percentile(overheads, 0.95) * 1000,
        "simulator_file_p50_ms": percentile(fetches, 0.5) * 1000,
        "stages_p50_ms": {k: percentile(sorted(v), 0.5) * 1000 for k, v in stages.items()},
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--count", type=int, default=20, help="upscale + text-to-image pairs")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured pairs first")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="GET poll interval")
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    args = parser.parse_args(argv)
    if args.count < 1 or args.warmup < 0:
        parser.error("--count must be positive and --warmup not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = f"upscale {uuid.uuid4().hex[:8]}"
    with bench_environment(NAME) as base, ExitStack() as stack:
        postgres = server_version(base.database_url)
        env = simulated(base, free_port())
        sim_url = f"http://127.0.0.1:{env.settings.simulator_port}"
        c = build(env.settings)
        stack.callback(c.close)
        created = seed_user(c, credits="1000000", projections=("ledger", "generations"))
        api, _ = start_platform(
            stack,
            env,
            worker_processes=args.worker_processes,
            worker_threads=args.worker_threads,
        )
        source = photo_like_png(1024)
        upload_id, upload_s = upload(api, created.api_key, source)
        poll_s = args.poll_ms / 1000
        if args.warmup:
            run_async(pairs(api, created.api_key, upload_id, f"{run} warm", args.warmup, poll_s))
        samples = run_async(pairs(api, created.api_key, upload_id, run, args.count, poll_s))
        results = {kind: analyse(c, sim_url, samples[kind]) for kind in KINDS}
        return report(args, postgres, len(source), upload_s, results, samples)


def report(
    args: argparse.Namespace,
    postgres: str,
    source_bytes: int,
    upload_s: float,
    results: dict[str, dict[str, Any]],
    samples: dict[str, list[dict[str, Any]]],
) -> int:
    up, t2i = results["upscale"], results["text-to-image"]
    print(
        f"{args.count} pairs, one request at a time (poll {args.poll_ms:g} ms); upload of a "
        f"{source_bytes:,}-byte 1024x1024 PNG took {upload_s * 1000:.0f} ms"
    )
    rows: list[list[Any]] = []
    for kind in KINDS:
        r = results[kind]
        rows.append(
            [
                kind,
                f"{r['completed']}/{r['of']}",
                r["overhead_p50_ms"],
                r["overhead_p95_ms"],
                r["simulator_file_p50_ms"],
                r["overhead_p50_ms"] - r["simulator_file_p50_ms"],
                *(r["stages_p50_ms"][stage] for stage in STAGES),
            ]
        )
    headers = ["kind", "completed", "overhead p50 ms", "p95 ms", "sim file p50 ms"]
    headers += ["p50 less sim file", *(f"{s} p50 ms" for s in STAGES)]
    print(table(headers, rows))
    ratio = up["overhead_p50_ms"] / t2i["overhead_p50_ms"] if t2i["overhead_p50_ms"] else None
    print(f"upscale / text-to-image overhead p50: {ratio:.2f}x" if ratio else "no ratio")
    written = write_result(
        NAME,
        {
            "config": {
                "count": args.count,
                "warmup": args.warmup,
                "poll_ms": args.poll_ms,
                "worker_processes": args.worker_processes,
                "worker_threads": args.worker_threads,
                "simulator_latency_scale": 0,
                "source": "photo_like_png(1024)",
            },
            "postgres": postgres,
            "upload_ms": upload_s * 1000,
            "results": results,
            "ratio_overhead_p50": ratio,
            "samples": samples,
        },
    )
    print(f"written {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
