"""Throughput of the pipeline actor: images per second post-processed (1024x1024 PNG -> six
artefacts, blurhash, quality, the classifier's verdict, Completed) with two worker processes.

What it measures
    The platform as processes on a scratch database and Redis namespace, started by
    ``generation_end_to_end.platform``: ``pixevo simulator --latency-scale 0`` (here only the
    classifier, ``PIXEVO_CLASSIFIER_URL=<simulator>/moderation``), ``pixevo api`` (idle),
    ``pixevo dispatcher``, ``pixevo projections run`` and
    ``python -m dramatiq interfaces.worker --skip-logging --processes 2 --threads T``, for each
    T of ``--threads`` (default 2 and 4; a fresh platform each).

    Only the pipeline actor's path runs: this process stages each generation through the
    application (``Requested`` with a quote and fingerprint for ``sim-instant`` 1024x1024, a
    real hold placed in billing, ``Funded``, ``Submitted``; no ``Queued``, so no provider call)
    and stores its original, a generated photo-like 1024x1024 PNG (``_support.photo_like_png``,
    four seeds, ~2.5 MB), under ``generations/<id>/original.png`` in the ``LocalBlobStore``, as
    the provider step would. The worker's no-op handling of the staged ``Requested`` events is
    waited for. Then ``Produced`` is recorded:

    (a) Burst: ``--images`` generations (default 150) get ``Produced`` in one transaction; the
        dispatcher relays them to the ``process_result`` reaction (read the original, pipeline,
        store five artefacts, ``POST /moderation/v1/classify``, then ``Processed`` +
        ``Completed``; ``SettleGeneration`` then captures the hold). Rate = images / (last
        ``Completed`` - first ``Produced``), from the events' own timestamps in the event store;
        also the steady rate between the first and the last ``Completed``. CPU: cores busy per
        process from ``psutil`` (postgres: every postgres process on the machine) and the
        machine's busy share (``psutil.cpu_times``) over the burst.
    (b) One at a time: ``--sequential`` generations (default 10), each ``Produced`` after the
        previous one completed: ``Produced -> Processed`` is the actor's own time per image on an
        otherwise idle worker (dispatch and pick-up included), next to
        ``pipeline.process`` alone in this process.

Command
    .venv/bin/python -m benchmarks.pipeline_throughput [--images 150] [--sequential 10]
        [--threads 2 4] [--worker-processes 2]

Output: a table and ``benchmarks/results/pipeline_throughput.json``.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import psutil
import psycopg
import pyvips
from eventsourcing.persistence import Tracking

from application.generations import fingerprint
from application.normalise import GenerationRequest
from application.reactions import tracking_name
from benchmarks._support import (
    argument_parser,
    bench_environment,
    cpu_cores,
    cpu_snapshot,
    event_times,
    free_port,
    median,
    percentile,
    photo_like_png,
    seed_user,
    simulated,
    start_platform,
    table,
    wait_terminal,
    write_result,
)
from domain.generation import Generation
from domain.ids import uuid7
from infrastructure.broker import WORKER_POLL_MS
from infrastructure.imaging import pipeline
from interfaces.bootstrap import Container, build

NAME = "pipeline_throughput"
MODEL = "sim-instant"
SIZE = 1024
SEEDS = 4


def stage(c: Container, user_id: UUID, run: str, first: int, count: int, pngs: list[bytes]) -> list:
    """``count`` generations up to ``Submitted``, each original in the blob store (not timed)."""
    staged, last_requested = [], []
    for n in range(first, first + count):
        request = GenerationRequest(
            MODEL, f"{run} {n}", params={"width": SIZE, "height": SIZE, "seed": n}
        )
        normalised = c.generations.quote(request)
        generation = Generation.request(
            generation_id=uuid7(),
            user_id=user_id,
            model=normalised.model,
            provider=c.catalogue.get(normalised.model).provider,
            prompt=normalised.prompt,
            negative_prompt=None,
            params=normalised.params,
            output_format=normalised.output_format,
            quote=normalised.cost_units,
            allow_fallback=False,
            fingerprint=fingerprint(normalised),
            request_hash=uuid.uuid4().hex,
        )
        generation.fund(c.billing.place_hold(user_id, generation.quote, generation.cause))
        generation.submitted(f"staged-{n}", 1)
        png = pngs[n % len(pngs)]
        key = f"generations/{generation.id}/original.png"
        c.blobs.put(key, png, "image/png")
        recordings = c.generations.save(generation)
        last_requested.append(recordings[0].notification.id)  # Requested comes first
        staged.append((generation.id, key, len(png)))
    # the worker's generate reaction sees each Requested (a no-op: the status moved on)
    wanted = [Tracking(tracking_name("generations", "generate"), i) for i in last_requested]
    deadline = time.monotonic() + 60
    while wanted and time.monotonic() < deadline:
        wanted = [t for t in wanted if not c.generations.already_processed(t)]
        time.sleep(0.05)
    return staged


def produce(c: Container, staged: list) -> float:
    """``Produced`` for every staged generation, in one transaction; its duration (s)."""
    started = time.perf_counter()
    generations = []
    for generation_id, key, size in staged:
        generation = c.generations.generation(None, generation_id)
        generation.produced(key, SIZE, SIZE, "image/png", size, provider_ms=0)
        generations.append(generation)
    c.generations.save(*generations)
    return time.perf_counter() - started


def machine_busy() -> tuple[float, float]:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle, sum(times)


def one_config(args: argparse.Namespace, threads: int, pngs: list[bytes]) -> dict[str, Any]:
    run = f"pipe {uuid.uuid4().hex[:8]}"
    with bench_environment(f"{NAME}_t{threads}") as base, ExitStack() as stack:
        env = simulated(base, free_port())
        sim_url = f"http://127.0.0.1:{env.settings.simulator_port}"
        c = build(env.settings)
        stack.callback(c.close)
        user = seed_user(c, credits="1000000", projections=("ledger", "generations"))
        api, children = start_platform(
            stack,
            env,
            worker_processes=args.worker_processes,
            worker_threads=threads,
            worker_timeout_ms=WORKER_POLL_MS,
        )
        conn = stack.enter_context(psycopg.connect(env.database_url, autocommit=True))
        print(
            f"\nworker --processes {args.worker_processes} --threads {threads}: platform up "
            f"(simulator {sim_url}, data in {env.data_dir})"
        )

        seed = 0  # warm-up: every worker thread imports and runs the pipeline once or more
        warm = stage(c, user.user_id, run, seed, 2 * args.worker_processes * threads, pngs)
        seed += len(warm)
        produce(c, warm)
        wait_terminal(conn, [str(g) for g, _, _ in warm], children, timeout=120)

        sequential: list[dict[str, float]] = []
        for _ in range(args.sequential):
            one = stage(c, user.user_id, run, seed, 1, pngs)
            seed += 1
            produce(c, one)
            wait_terminal(conn, [str(one[0][0])], children, timeout=60)
            sequential.append(event_times(c, one[0][0]))

        burst = stage(c, user.user_id, run, seed, args.images, pngs)
        load_before = os.getloadavg()[0]
        cpu_before, busy_before = cpu_snapshot(api, children), machine_busy()
        started = time.perf_counter()
        produce_s = produce(c, burst)
        _, counts, _ = wait_terminal(
            conn, [str(g) for g, _, _ in burst], children, timeout=max(120.0, args.images * 2.0)
        )
        polled_s = time.perf_counter() - started
        busy_after = machine_busy()
        cores = cpu_cores(cpu_before, cpu_snapshot(api, children), polled_s)
        load_after = os.getloadavg()[0]
        times = [event_times(c, g) for g, _, _ in burst]

    produced = min(t["Produced"] for t in times)
    completed = sorted(t["Completed"] for t in times if "Completed" in t)
    elapsed = completed[-1] - produced
    waits = sorted(t["Processed"] - t["Produced"] for t in times if "Processed" in t)
    alone = sorted(t["Processed"] - t["Produced"] for t in sequential)
    done = len(completed)
    return {
        "threads": threads,
        "images": args.images,
        "statuses": counts,
        "produce_transaction_s": produce_s,
        "elapsed_s": elapsed,
        "images_per_s": done / elapsed,
        "steady_images_per_s": (done - 1) / (completed[-1] - completed[0]) if done > 1 else 0.0,
        "burst_produced_to_processed_ms": {
            "p50": percentile(waits, 0.5) * 1000,
            "p95": percentile(waits, 0.95) * 1000,
        },
        "sequential_produced_to_processed_ms": {
            "p50": percentile(alone, 0.5) * 1000,
            "p95": percentile(alone, 0.95) * 1000,
            "all": [v * 1000 for v in alone],
        },
        "cores_busy": cores,
        "worker_cpu_ms_per_image": cores["worker"] * polled_s / max(1, done) * 1000,
        "machine_busy": (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1]),
        "load_average": [load_before, load_after],
    }


def pipeline_alone(png: bytes, runs: int = 5) -> float:
    """Median ms of ``pipeline.process`` in this process (no operation cache), for reference."""
    pyvips.cache_set_max(0)
    pipeline.process(png, "png")
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        pipeline.process(png, "png")
        samples.append((time.perf_counter() - started) * 1000)
    return median(samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--images", type=int, default=150, help="generations in the burst")
    parser.add_argument("--sequential", type=int, default=10, help="one-at-a-time samples")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--worker-processes", type=int, default=2)
    args = parser.parse_args(argv)
    if args.images < 2 or args.sequential < 1 or min(args.threads) < 1:
        parser.error("--images must be at least 2, --sequential and --threads positive")
    pngs = [photo_like_png(SIZE, seed) for seed in range(7, 7 + SEEDS)]
    print(
        f"{NAME}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; originals: "
        f"{SEEDS} generated {SIZE}x{SIZE} PNGs, {median([len(p) for p in pngs]):,.0f} bytes "
        f"(median); settings {pipeline.WEBP_Q=}, {pipeline.WEBP_EFFORT=}, {pipeline.AVIF_Q=}, "
        f"{pipeline.AVIF_EFFORT=}, {pipeline.PNG_COMPRESSION=}"
    )
    alone_ms = pipeline_alone(pngs[0])
    print(
        f"pipeline.process alone in this process (idle platform not yet started): {alone_ms:.0f} ms"
    )
    results = []
    for threads in args.threads:
        result = one_config(args, threads, pngs)
        results.append(result)
        print(
            f"  {result['images']} images: {result['statuses']}, produce transaction "
            f"{result['produce_transaction_s'] * 1000:.0f} ms; cores busy: "
            + ", ".join(f"{k} {v:.2f}" for k, v in result["cores_busy"].items())
        )

    print(
        f"\nthroughput with --processes {args.worker_processes}, burst of {args.images} "
        f"(rates from event timestamps; per-image = Produced -> Processed)"
    )
    rows = [
        [
            r["threads"],
            r["images_per_s"],
            r["steady_images_per_s"],
            r["elapsed_s"],
            r["sequential_produced_to_processed_ms"]["p50"],
            r["burst_produced_to_processed_ms"]["p50"],
            r["burst_produced_to_processed_ms"]["p95"],
            r["worker_cpu_ms_per_image"],
            r["machine_busy"] * 100,
            f"{r['load_average'][0]:.2f} -> {r['load_average'][1]:.2f}",
        ]
        for r in results
    ]
    headers = ["threads", "images/s", "steady/s", "s", "alone p50 ms", "burst p50 ms"]
    print(table([*headers, "burst p95 ms", "worker CPU ms/img", "machine busy %", "load"], rows))
    print(
        f"alone = {args.sequential} generations one at a time (idle worker); burst p50/p95 "
        "include the wait in the queue; load = 1-min load average before -> after the burst "
        "(the platform's own threads included). The machine has "
        f"{os.cpu_count()} CPUs: 2 cores / worker CPU per image bounds the rate at "
        + ", ".join(
            f"{(os.cpu_count() or 1) * 1000 / r['worker_cpu_ms_per_image']:.1f}/s (threads "
            f"{r['threads']})"
            for r in results
        )
    )
    written = write_result(
        NAME,
        {
            "config": {
                "images": args.images,
                "sequential": args.sequential,
                "worker_processes": args.worker_processes,
                "threads": args.threads,
                "model": MODEL,
                "size": SIZE,
                "mode": "staged Produced events (pipeline actor only)",
            },
            "original_png_bytes": [len(p) for p in pngs],
            "pipeline_alone_ms": alone_ms,
            "results": results,
        },
    )
    print(f"written {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
