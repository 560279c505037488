"""POST /v1/generations accepted per second and p50/p99 latency at 32 concurrent clients, beside
the raw append rate of the generation application measured in the same run.

What it measures
    The API runs as a real, separate process (``pixevo api [--workers N]``) on a
    scratch database holding one user with 1,000,000 credits, its ledger projection caught up
    (so the route's fast balance pre-check passes). No worker, dispatcher or projection runner
    runs: this measures *acceptance* only (202 = the ``Requested`` event is in the event store).
    A load generator in this process (one event loop, uvloop when installed, the minimal
    keep-alive HTTP/1.1 client of ``_support.HttpConnection``) runs ``--clients`` tasks (default
    32), each on its own connection looping ``POST /v1/generations`` with the user's bearer key
    and ``{"model": "sim-instant", "prompt": "bench <run> <n>", "params": {"seed": n}}`` (every
    request distinct), for ``--duration`` seconds after ``--warmup`` seconds. Responses 202 inside
    the window are counted and their latency recorded; anything else is an error.

    Per request the API does: authentication (one query), quote (in process), the balance
    pre-check (one query on the ledger projection), then ``GenerationsApplication.request`` on a
    thread (``asyncio.to_thread``), which saves one ``Generation.Requested`` event.

    Baseline, in the same repeat, with the API idle: the raw append rate of the generation
    application, i.e. ``c.generations.request(user_id, GenerationRequest(...))`` called in a
    loop in this process for ``--raw-duration`` seconds, with 1 thread and with
    ``--raw-threads`` threads (default 4). Each repeat measures HTTP, raw x1 and raw xN back to
    back, so each ratio is computed within one repeat; the table shows medians over
    ``--repeats``.

    Which ratio is the target's: accepted/s over the raw rate with ``--raw-threads`` threads.
    That is the like-for-like comparison: one Python process (one GIL) issuing concurrent
    ``request`` calls on threads, as the API does through ``asyncio.to_thread`` (its default
    executor has min(32, cpus + 4) = 6 threads here). With ``--api-workers 2`` the API has two
    processes against a one-process baseline: the ratio is then reported but flattering. The
    ratio over the single-thread rate is printed too.

Command
    .venv/bin/python -m benchmarks.generation_requests [--clients 32] [--duration 8]
        [--warmup 2] [--raw-duration 4] [--raw-threads 4] [--repeats 5] [--api-workers 1]

    Each repeat also runs one client alone for ``--duration / 2`` seconds: the p99 a request
    has when nothing queues with it.

Targets
    accepted/s >= 60 % of the raw append rate (ratio against the ``--raw-threads`` baseline);
    issue 14: accepted/s >= 2x the raw *single-thread* append rate (group commit multiplies),
    and the p99 at ``--clients`` <= 2x the p99 at 1 client.

Output: a table of medians over the repeats and ``benchmarks/results/generation_requests.json``.
The load generator, the API and PostgreSQL share this machine's cores; the cpu columns show
cores busy in the window (the PostgreSQL column sums every ``postgres`` process on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import psycopg

from application.normalise import GenerationRequest
from benchmarks._support import (
    ApiProcess,
    HttpConnection,
    argument_parser,
    bench_environment,
    cpu_seconds,
    free_port,
    median,
    percentile,
    postgres_cpu_delta,
    postgres_cpu_snapshot,
    redacted,
    run_async,
    seed_user,
    server_version,
    table,
    write_result,
)
from interfaces.bootstrap import Container, build

NAME = "generation_requests"
MODEL = "sim-instant"


# -- the HTTP side ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpWindow:
    accepted_per_s: float
    p50_ms: float
    p99_ms: float
    accepted: int
    errors: int
    statuses: dict[str, int]
    client_cpu: float
    api_cpu: float
    postgres_cpu: float
    #: Of the scratch database's sessions sampled running a statement, the share waiting on a
    #: heavyweight lock (the event table's ``LOCK TABLE ... EXCLUSIVE``, appends queueing).
    lock_wait_share: float = 0.0


class LockWaits:
    """Samples ``pg_stat_activity`` of one database every ``interval_s`` on a thread: how many
    of its sessions are running a statement, and how many of those wait on a lock."""

    QUERY = (
        "SELECT count(*) FILTER (WHERE state = 'active'), "
        "count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock') "
        "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )

    def __init__(self, database_url: str, interval_s: float = 0.005) -> None:
        self.database_url, self.interval_s = database_url, interval_s
        self.active = self.waiting = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self.stopping.wait(self.interval_s):
                row = conn.execute(self.QUERY).fetchone()
                if row is not None:
                    self.active += int(row[0])
                    self.waiting += int(row[1])

    def __enter__(self) -> LockWaits:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    @property
    def share(self) -> float:
        return self.waiting / self.active if self.active else 0.0


async def post_load(
    api: ApiProcess,
    api_key: str,
    run: str,
    *,
    database_url: str,
    clients: int,
    warmup: float,
    duration: float,
    first_seed: int,
) -> HttpWindow:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    counter = first_seed
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup
    window_end = window_start + duration
    headers = {"Authorization": f"Bearer {api_key}"}

    async def worker() -> None:
        nonlocal errors, counter
        conn = HttpConnection("127.0.0.1", api.port, headers)
        try:
            while True:
                counter += 1
                n = counter
                body = (
                    f'{{"model":"{MODEL}","prompt":"bench {run} {n}","params":{{"seed":{n}}}}}'
                ).encode()
                sent = time.perf_counter()
                try:
                    status, _ = await conn.request("POST", "/v1/generations", body)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status = 0
                done = time.perf_counter()
                now = loop.time()
                if now >= window_end:
                    return
                if now >= window_start:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                    if status == 202:
                        latencies.append(done - sent)
                    else:
                        errors += 1
        finally:
            await conn.close()

    async def meter() -> tuple[float, float, float, float]:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        processes = api.processes()
        c0, a0, t0 = time.process_time(), cpu_seconds(processes), time.perf_counter()
        pg0 = postgres_cpu_snapshot()
        with LockWaits(database_url) as locks:
            await asyncio.sleep(max(0.0, window_end - loop.time()))
        elapsed = time.perf_counter() - t0
        return (
            (time.process_time() - c0) / elapsed,
            (cpu_seconds(processes) - a0) / elapsed,
            postgres_cpu_delta(pg0) / elapsed,
            locks.share,
        )

    metering = asyncio.create_task(meter())
    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
        client_cpu, api_cpu, pg_cpu, lock_share = await metering
    finally:
        metering.cancel()
    latencies.sort()
    return HttpWindow(
        accepted_per_s=len(latencies) / duration,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        accepted=len(latencies),
        errors=errors,
        statuses=statuses,
        client_cpu=client_cpu,
        api_cpu=api_cpu,
        postgres_cpu=pg_cpu,
        lock_wait_share=lock_share,
    )


# -- the raw application side -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawWindow:
    threads: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu: float  # cores used by this process
    postgres_cpu: float
    lock_wait_share: float = 0.0  # as HttpWindow's


def raw_appends(
    c: Container, user_id: UUID, run: str, *, threads: int, duration: float, first_seed: int
) -> RawWindow:
    """``threads`` threads calling ``generations.request`` until ``duration`` seconds passed."""
    app = c.generations
    per_thread: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]
    failures: list[BaseException] = []

    def loop(index: int) -> None:
        latencies = per_thread[index]
        n = first_seed + index * 1_000_000
        try:
            barrier.wait()
            end = stop_at[0]
            while True:
                n += 1
                request = GenerationRequest(
                    model=MODEL, prompt=f"raw {run} {n}", params={"seed": n}
                )
                started = time.perf_counter()
                app.request(user_id, request)
                done = time.perf_counter()
                if done >= end:
                    return
                latencies.append(done - started)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    pg0 = postgres_cpu_snapshot()
    c0, t0 = time.process_time(), time.perf_counter()
    stop_at[0] = t0 + duration
    with LockWaits(c.settings.database_url) as locks:
        barrier.wait()
        for worker in workers:
            worker.join()
    elapsed = time.perf_counter() - t0
    cpu = (time.process_time() - c0) / elapsed
    pg_cpu = postgres_cpu_delta(pg0) / elapsed
    if failures:
        raise RuntimeError(f"raw appends failed: {failures[0]!r}") from failures[0]
    latencies = sorted(x for chunk in per_thread for x in chunk)
    return RawWindow(
        threads=threads,
        requests_per_s=len(latencies) / duration,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        requests=len(latencies),
        cpu=cpu,
        postgres_cpu=pg_cpu,
        lock_wait_share=locks.share,
    )


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--duration", type=float, default=8.0, help="measured HTTP seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured HTTP seconds first")
    parser.add_argument(
        "--raw-duration", type=float, default=4.0, help="measured seconds per raw baseline"
    )
    parser.add_argument(
        "--raw-threads",
        type=int,
        default=4,
        help="threads of the second raw baseline (the target's comparison); the first has 1",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--api-workers", type=int, default=1, help="pixevo api --workers N")
    parser.add_argument("--target", type=float, default=0.60, help="accepted/raw ratio target")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.clients < 1 or args.raw_threads < 1:
        parser.error("--repeats, --clients and --raw-threads must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = uuid.uuid4().hex[:8]  # in every prompt: no two requests alike, across runs too
    with bench_environment(NAME) as env:
        args.postgres_version = server_version(env.database_url)
        c = build(env.settings)
        try:
            created = seed_user(c, credits="1000000")
            print(
                f"{NAME}: PostgreSQL {args.postgres_version} at "
                f"{redacted(env.database_url)}; load average {os.getloadavg()[0]:.2f}"
            )
            with ApiProcess(env, free_port(), args.api_workers) as api:
                print(
                    f"pixevo api --workers {args.api_workers} on {api.base_url}: healthy after "
                    f"{api.wait_healthy():.1f} s"
                )
                return measure(args, c, api, created.user_id, created.api_key, run)
        finally:
            c.close()


def measure(
    args: argparse.Namespace,
    c: Container,
    api: ApiProcess,
    user_id: UUID,
    api_key: str,
    run: str,
) -> int:
    auth = {"Authorization": f"Bearer {api_key}"}
    body = {"model": MODEL, "prompt": f"bench {run} check", "params": {"seed": 0}}
    with httpx.Client(base_url=api.base_url, headers=auth, timeout=10) as client:
        check = client.post("/v1/generations", json=body)
    if check.status_code != 202:
        raise RuntimeError(f"POST /v1/generations answered {check.status_code}: {check.text}")
    print(f"POST /v1/generations -> 202 {json.loads(check.text)['status']}")
    raw_once = c.generations.request(
        user_id, GenerationRequest(model=MODEL, prompt=f"raw {run} check", params={"seed": 0})
    )
    print(f"generations.request -> {raw_once[0].status} (baseline warmed up)")

    http_runs: list[HttpWindow] = []
    single_runs: list[HttpWindow] = []
    raw1_runs: list[RawWindow] = []
    rawn_runs: list[RawWindow] = []
    seed = 0
    for repeat in range(args.repeats):
        window = run_async(
            post_load(
                api,
                api_key,
                run,
                database_url=c.settings.database_url,
                clients=args.clients,
                warmup=args.warmup,
                duration=args.duration,
                first_seed=seed,
            )
        )
        seed += 10_000_000
        http_runs.append(window)
        single = run_async(  # the latency a request has when it is alone
            post_load(
                api,
                api_key,
                run,
                database_url=c.settings.database_url,
                clients=1,
                warmup=min(args.warmup, 1.0),
                duration=args.duration / 2,
                first_seed=seed,
            )
        )
        seed += 10_000_000
        single_runs.append(single)
        raws = []
        for threads, runs in ((1, raw1_runs), (args.raw_threads, rawn_runs)):
            raw = raw_appends(
                c, user_id, run, threads=threads, duration=args.raw_duration, first_seed=seed
            )
            seed += 10_000_000
            runs.append(raw)
            raws.append(raw)
        print(
            f"  repeat {repeat + 1}/{args.repeats}: POST {window.accepted_per_s:6,.0f}/s "
            f"p50 {window.p50_ms:5.1f} ms p99 {window.p99_ms:5.1f} ms errors {window.errors} "
            f"(cpu client {window.client_cpu:.2f} api {window.api_cpu:.2f} "
            f"pg {window.postgres_cpu:.2f}, lock waits {window.lock_wait_share:.0%}) | raw x1 "
            f"{raws[0].requests_per_s:6,.0f}/s "
            f"raw x{args.raw_threads} {raws[1].requests_per_s:6,.0f}/s | 1 client p99 "
            f"{single.p99_ms:5.1f} ms"
        )
        api_alive(api)

    ratio_n = [
        h.accepted_per_s / r.requests_per_s
        for h, r in zip(http_runs, rawn_runs, strict=True)
        if r.requests_per_s
    ]
    ratio_1 = [
        h.accepted_per_s / r.requests_per_s
        for h, r in zip(http_runs, raw1_runs, strict=True)
        if r.requests_per_s
    ]
    rows = [
        [
            f"POST /v1/generations ({clients} clients, api x{args.api_workers})",
            median([w.accepted_per_s for w in runs]),
            median([w.p50_ms for w in runs]),
            median([w.p99_ms for w in runs]),
            sum(w.errors for w in runs),
            median([w.client_cpu + w.api_cpu for w in runs]),
            median([w.postgres_cpu for w in runs]),
        ]
        for clients, runs in ((args.clients, http_runs), (1, single_runs))
    ]
    for label, runs in (
        ("generations.request raw, 1 thread", raw1_runs),
        (f"generations.request raw, {args.raw_threads} threads", rawn_runs),
    ):
        rows.append(
            [
                label,
                median([r.requests_per_s for r in runs]),
                median([r.p50_ms for r in runs]),
                median([r.p99_ms for r in runs]),
                0,
                median([r.cpu for r in runs]),
                median([r.postgres_cpu for r in runs]),
            ]
        )
    print()
    print(
        f"medians of {args.repeats} repeats (HTTP {args.duration:g} s after {args.warmup:g} s "
        f"warm-up; raw {args.raw_duration:g} s each)"
    )
    print(
        table(
            ["measure", "per s", "p50 ms", "p99 ms", "errors", "py cpu", "pg cpu"],
            rows,
        )
    )
    target_ratio = median(ratio_n)
    print(
        f"ratio accepted/raw x{args.raw_threads} threads (the target's): {target_ratio:.3f} "
        f"(per repeat {', '.join(f'{r:.2f}' for r in ratio_n)}); target >= {args.target:.2f}: "
        f"{'MET' if target_ratio >= args.target else 'NOT MET'}"
    )
    group_ratio = median(ratio_1)
    p99_ratio = median([w.p99_ms for w in http_runs]) / median([w.p99_ms for w in single_runs])
    print(
        f"ratio accepted/raw x1 thread: {group_ratio:.3f} "
        f"(per repeat {', '.join(f'{r:.2f}' for r in ratio_1)}); target >= 2 (group commit "
        f"multiplies): {'MET' if group_ratio >= 2 else 'NOT MET'}"
    )
    print(
        f"p99 at {args.clients} clients / p99 at 1 client: {p99_ratio:.2f}; target <= 2: "
        f"{'MET' if p99_ratio <= 2 else 'NOT MET'}"
    )
    lock_share = median([w.lock_wait_share for w in http_runs])
    raw_lock = median([r.lock_wait_share for r in rawn_runs])
    api_cpu = median([w.api_cpu for w in http_runs])
    accepted = median([w.accepted_per_s for w in http_runs])
    print(
        f"what bounds it: of the database's sessions running a statement, {lock_share:.0%} "
        f"waited on a lock (the event table's; {raw_lock:.0%} with the raw baseline's "
        f"{args.raw_threads} threads); the API used {api_cpu:.2f} cores, "
        f"{api_cpu / accepted * 1000 if accepted else float('nan'):.2f} ms of CPU per accepted "
        f"request, with {args.api_workers} process(es) on {os.cpu_count()} cores"
    )
    print(
        "note: 'py cpu' is the load generator + API processes for the POST row, this process "
        "for the raw rows; 'pg cpu' sums every postgres process on the machine. All share "
        f"{os.cpu_count()} cores; load average now {os.getloadavg()[0]:.2f}."
    )
    written = write_result(
        NAME,
        {
            "config": {
                "clients": args.clients,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "raw_duration_s": args.raw_duration,
                "raw_threads": args.raw_threads,
                "repeats": args.repeats,
                "api_workers": args.api_workers,
                "model": MODEL,
                "load_generator": "raw asyncio HTTP/1.1 keep-alive, this process, same machine",
            },
            "postgres": args.postgres_version,
            "target": {
                "ratio": args.target,
                "compared_with": f"raw append rate with {args.raw_threads} threads",
                "met": target_ratio >= args.target,
                "accepted_over_raw_1_thread": group_ratio,
                "accepted_over_raw_1_thread_met": group_ratio >= 2,
                "p99_over_1_client_p99": p99_ratio,
                "p99_met": p99_ratio <= 2,
                "lock_wait_share": lock_share,
                "api_cpu_ms_per_request": api_cpu / accepted * 1000 if accepted else None,
            },
            "results": {
                "http": {
                    "accepted_per_s_median": rows[0][1],
                    "p50_ms_median": rows[0][2],
                    "p99_ms_median": rows[0][3],
                    "errors_total": rows[0][4],
                    "runs": [_as_dict(w) for w in http_runs],
                },
                "http_1_client": {
                    "accepted_per_s_median": rows[1][1],
                    "p99_ms_median": rows[1][3],
                    "runs": [_as_dict(w) for w in single_runs],
                },
                "raw_1_thread": {
                    "requests_per_s_median": rows[2][1],
                    "runs": [_as_dict(r) for r in raw1_runs],
                },
                f"raw_{args.raw_threads}_threads": {
                    "requests_per_s_median": rows[3][1],
                    "runs": [_as_dict(r) for r in rawn_runs],
                },
            },
            "ratio_accepted_to_raw_n_threads_median": target_ratio,
            "ratios_accepted_to_raw_n_threads": ratio_n,
            "ratio_accepted_to_raw_1_thread_median": median(ratio_1),
            "ratios_accepted_to_raw_1_thread": ratio_1,
        },
    )
    print(f"written {written}")
    return 0


def api_alive(api: ApiProcess) -> None:
    api.check()


def _as_dict(window: Any) -> dict[str, Any]:
    return {name: getattr(window, name) for name in type(window).__slots__}


if __name__ == "__main__":
    raise SystemExit(main())
