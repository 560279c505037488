"""GET /v1/credits requests/s and p50/p99 latency under 32 concurrent clients.

What it measures
    The API runs as a real, separate process (``pixevo api [--workers N]``) on a
    scratch database that holds one user with 10 credits, its ledger projection caught up. A
    load generator in this process (one event loop, uvloop when installed) runs ``--clients``
    tasks (default 32), each on its own keep-alive connection looping ``GET /v1/credits`` with
    the user's bearer key (authentication query + balance and holds queries on the
    projection), for ``--duration`` seconds after ``--warmup`` seconds; every request
    completed inside the window is counted and its latency recorded.

    The default client (``--client raw``) is a minimal HTTP/1.1 client on asyncio streams;
    ``--client httpx`` uses one ``httpx.AsyncClient`` instead. On this 2-core machine httpx
    itself saturates a core at roughly 450 requests/s, far below what the API serves, so with
    it the benchmark measures the client (see the "client cpu" column).

    Each repeat then does the same for ``GET /health`` (no auth, no database) for
    ``--health-duration`` seconds, as the framework-and-client baseline, so the ratio
    credits/health is computed within the same repeat. Reported: medians over ``--repeats`` of
    requests/s, p50 and p99 latency, and the CPU used by the load generator and by the API
    process(es) during the window (the load generator, the API and PostgreSQL share this
    machine's cores, so the client's own cost is in the numbers).

Command
    .venv/bin/python -m benchmarks.credits_http [--clients 32] [--duration 10] [--warmup 2]
        [--repeats 5] [--health-duration 5] [--api-workers 1] [--client raw|httpx]

Target
    None fixed: GET /v1/credits requests/s and p99 latency with 32 concurrent clients, and its
    ratio to GET /health on the same server and client.

Output: a table of medians over the repeats and ``benchmarks/results/credits_http.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks._support import (
    ApiProcess,
    argument_parser,
    bench_environment,
    cpu_seconds,
    free_port,
    median,
    percentile,
    redacted,
    run_async,
    seed_user,
    server_version,
    table,
    write_result,
)
from interfaces.bootstrap import build

NAME = "credits_http"


# -- the load generator -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    client_cpu: float  # cores used by this process during the window
    server_cpu: float  # cores used by the API process(es) during the window


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: one connection, GET only.

    Much cheaper per request than ``httpx`` (no pool, no header objects), so the load generator
    leaves more of the shared cores to the API; it understands ``Content-Length`` and chunked
    bodies and reconnects when the server closes the connection.
    """

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> int:
        reader, writer = self.reader, self.writer
        if reader is None or writer is None:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.reader, self.writer = reader, writer
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lowered = head.lower()
        marker = lowered.find(b"\r\ncontent-length:")
        if marker >= 0:
            value_end = lowered.index(b"\r\n", marker + 2)
            await reader.readexactly(int(lowered[marker + 17 : value_end]))
        elif b"\r\ntransfer-encoding: chunked" in lowered:
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        if b"\r\nconnection: close" in lowered:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def load(
    base_url: str,
    path: str,
    headers: dict[str, str],
    *,
    clients: int,
    warmup: float,
    duration: float,
    api: ApiProcess,
    client_kind: str,
) -> Window:
    """``clients`` tasks looping GET ``path``; completions inside the window are counted."""
    latencies: list[float] = []
    errors = 0
    url = httpx.URL(base_url)
    host, port = url.host, url.port or 80
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    shared = (
        httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0, headers=headers)
        if client_kind == "httpx"
        else None
    )
    loop = asyncio.get_running_loop()
    window_start = loop.time() + warmup
    window_end = window_start + duration

    async def worker() -> None:
        nonlocal errors
        raw = RawConnection(host, port, path, headers) if shared is None else None
        try:
            while True:
                sent = time.perf_counter()
                try:
                    if raw is not None:
                        ok = await raw.get() == 200
                    elif shared is not None:
                        ok = (await shared.get(path)).status_code == 200
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                    if raw is not None:
                        await raw.close()
                done = time.perf_counter()
                now = loop.time()
                if now >= window_end:
                    return
                if now >= window_start:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1
        finally:
            if raw is not None:
                await raw.close()

    async def meter() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, window_start - loop.time()))
        processes = api.processes()
        c0, s0, t0 = time.process_time(), cpu_seconds(processes), time.perf_counter()
        await asyncio.sleep(max(0.0, window_end - loop.time()))
        elapsed = time.perf_counter() - t0
        return (
            (time.process_time() - c0) / elapsed,
            (cpu_seconds(processes) - s0) / elapsed,
        )

    metering = asyncio.create_task(meter())
    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
        client_cpu, server_cpu = await metering
    finally:
        metering.cancel()
        if shared is not None:
            await shared.aclose()
    latencies.sort()
    return Window(
        requests_per_s=len(latencies) / duration,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        requests=len(latencies),
        errors=errors,
        client_cpu=client_cpu,
        server_cpu=server_cpu,
    )


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--clients", type=int, default=32, help="concurrent client tasks")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--health-duration",
        type=float,
        default=5.0,
        help="measured seconds of the GET /health baseline per repeat (0: skip it)",
    )
    parser.add_argument("--api-workers", type=int, default=1, help="pixevo api --workers N")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="load generator: a minimal asyncio HTTP/1.1 client (default) or httpx.AsyncClient",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_environment(NAME) as env:
        c = build(env.settings)
        try:
            created = seed_user(c, credits=10)
        finally:
            c.close()
        print(
            f"{NAME}: PostgreSQL {server_version(env.database_url)} at {redacted(env.database_url)}"
        )
        with ApiProcess(env, free_port(), args.api_workers) as api:
            print(
                f"pixevo api --workers {args.api_workers} on {api.base_url}: healthy after "
                f"{api.wait_healthy():.1f} s"
            )
            return measure(args, api, created.api_key, env.database_url)


def measure(args: argparse.Namespace, api: ApiProcess, api_key: str, database_url: str) -> int:
    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=api.base_url, headers=auth) as client:
        check = client.get("/v1/credits")
    if check.status_code != 200:
        raise RuntimeError(f"GET /v1/credits answered {check.status_code}: {check.text}")
    print(f"GET /v1/credits -> {check.json()}")

    endpoints = [("GET /v1/credits", "/v1/credits", auth, args.duration)]
    if args.health_duration > 0:
        endpoints.append(("GET /health", "/health", {}, args.health_duration))
    runs: dict[str, list[Window]] = {label: [] for label, *_ in endpoints}
    for repeat in range(args.repeats):
        for label, path, headers, duration in endpoints:
            window = run_async(
                load(
                    api.base_url,
                    path,
                    headers,
                    clients=args.clients,
                    warmup=args.warmup,
                    duration=duration,
                    api=api,
                    client_kind=args.client,
                )
            )
            runs[label].append(window)
            print(
                f"  repeat {repeat + 1}/{args.repeats} {label:<16} "
                f"{window.requests_per_s:8,.0f} req/s  p50 {window.p50_ms:6.1f} ms  "
                f"p99 {window.p99_ms:6.1f} ms  errors {window.errors}  "
                f"cpu client {window.client_cpu:.2f} api {window.server_cpu:.2f}"
            )

    credits_runs = runs["GET /v1/credits"]
    health_runs = runs.get("GET /health", [])
    ratios = [
        c.requests_per_s / h.requests_per_s
        for c, h in zip(credits_runs, health_runs, strict=False)
        if h.requests_per_s
    ]
    rows = []
    results: dict[str, Any] = {}
    for label, windows in runs.items():
        row = {
            "requests_per_s_median": median([w.requests_per_s for w in windows]),
            "p50_ms_median": median([w.p50_ms for w in windows]),
            "p99_ms_median": median([w.p99_ms for w in windows]),
            "errors_total": sum(w.errors for w in windows),
            "client_cpu_cores_median": median([w.client_cpu for w in windows]),
            "api_cpu_cores_median": median([w.server_cpu for w in windows]),
            "runs": [_as_dict(w) for w in windows],
        }
        results[label] = row
        rows.append(
            [
                label,
                row["requests_per_s_median"],
                row["p50_ms_median"],
                row["p99_ms_median"],
                row["errors_total"],
                row["client_cpu_cores_median"],
                row["api_cpu_cores_median"],
            ]
        )
    print()
    print(
        f"{args.clients} concurrent clients, medians of {args.repeats} repeats "
        f"({args.duration:g} s measured after {args.warmup:g} s warm-up; /health "
        f"{args.health_duration:g} s), pixevo api --workers {args.api_workers}"
    )
    print(
        table(
            ["endpoint", "req/s", "p50 ms", "p99 ms", "errors", "client cpu", "api cpu"],
            rows,
        )
    )
    if ratios:
        print(
            f"ratio /v1/credits to /health req/s (median of per-repeat ratios): "
            f"{median(ratios):.3f}"
        )
    print(
        f"note: the load generator (this Python process, client {args.client}), the API and "
        f"PostgreSQL share this machine's {os.cpu_count()} cores; 'cpu' columns are cores "
        f"busy in the window (PostgreSQL's not shown)."
    )
    written = write_result(
        NAME,
        {
            "config": {
                "clients": args.clients,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "health_duration_s": args.health_duration,
                "repeats": args.repeats,
                "api_workers": args.api_workers,
                "client": args.client,
                "load_generator": "one event loop in the benchmark process, same machine",
            },
            "postgres": server_version(database_url),
            "results": results,
            "ratio_credits_to_health_median": median(ratios) if ratios else None,
            "ratios_credits_to_health": ratios,
        },
    )
    print(f"written {written}")
    return 0


def _as_dict(window: Window) -> dict[str, Any]:
    return {name: getattr(window, name) for name in Window.__slots__}


if __name__ == "__main__":
    raise SystemExit(main())
