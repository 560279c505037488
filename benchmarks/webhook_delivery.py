"""Webhook delivery: from a generation's ``Completed`` event to its receipt at an endpoint, and
deliveries per second, with every platform process real (issue 13).

What it measures
    The platform as separate processes (``_support.start_platform``: simulator at latency scale
    0, API, dispatcher with its webhook sender, projections, a worker of ``--worker-processes``
    x ``--worker-threads``) on a scratch database and Redis namespace, with
    ``PIXEVO_WEBHOOKS_ALLOW_PRIVATE=1``. A receiver in this process (``ThreadingHTTPServer`` on
    127.0.0.1, answering 204 at once) is registered for ``generation.completed`` by one user
    with 1,000,000 credits. ``--count`` generations (default 1,000; ``sim-instant``, 256x256,
    each seed distinct so the cache never answers) are submitted from ``--clients`` (default 16)
    threads; the receiver records each request's arrival time and ``webhook-id``.

    Latency = arrival (this machine's clock) - the event's timestamp (the body's ``timestamp``:
    when the generations context recorded ``Completed``; same machine, same clock). It covers
    the webhook projection's pick-up of the event (NOTIFY or poll), the outbox rows, the
    sender's claim, the signing and the HTTP POST. Deliveries to ONE endpoint go one at a time
    and in order, so a burst queues: p50/p99 over the whole burst include that queueing.
    Deliveries/s = count / (last arrival - first arrival). Events/s = count / (last event
    timestamp - first), for comparison: the sender keeps up if the two are close.

Command
    .venv/bin/python -m benchmarks.webhook_delivery [--count 1000] [--clients 16]
        [--worker-processes 2] [--worker-threads 8]

Output: a table and ``benchmarks/results/webhook_delivery.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg

from benchmarks._support import (
    argument_parser,
    bench_environment,
    free_port,
    percentile,
    redacted,
    seed_user,
    server_version,
    simulated,
    start_platform,
    table,
    write_result,
)
from interfaces.bootstrap import build

NAME = "webhook_delivery"


class Receipts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrivals: dict[str, tuple[float, float]] = {}  # webhook-id: (arrived, event at)
        self.requests = 0

    def add(self, message_id: str, arrived: float, event_at: float) -> None:
        with self.lock:
            self.requests += 1
            self.arrivals.setdefault(message_id, (arrived, event_at))

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


def receiver(receipts: Receipts) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            arrived = time.time()
            event_at = datetime.fromisoformat(json.loads(body)["timestamp"]).timestamp()
            receipts.add(self.headers["webhook-id"], arrived, event_at)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=8)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    receipts = Receipts()
    server = receiver(receipts)
    hook_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    load_before = os.getloadavg()
    with bench_environment(NAME) as scratch, ExitStack() as stack:
        env = simulated(scratch, free_port())
        env = replace(env, settings=replace(env.settings, webhooks_allow_private=True))
        postgres = server_version(env.database_url)
        print(
            f"{NAME}: {os.cpu_count()} CPUs, load average "
            f"{' '.join(f'{x:.2f}' for x in load_before)}; PostgreSQL {postgres} at "
            f"{redacted(env.database_url)}"
        )
        c = build(env.settings)
        stack.callback(c.close)
        user = seed_user(c, 1_000_000)
        api, _ = start_platform(
            stack, env, worker_processes=args.worker_processes, worker_threads=args.worker_threads
        )
        headers = {"Authorization": f"Bearer {user.api_key}"}
        with httpx.Client(base_url=api.base_url, headers=headers, timeout=60) as http:
            made = http.post(
                "/v1/webhooks", json={"url": hook_url, "events": ["generation.completed"]}
            )
            made.raise_for_status()

            def submit(n: int) -> None:
                body = {
                    "model": "sim-instant",
                    "prompt": f"webhook bench {n}",
                    "params": {"width": 256, "height": 256, "seed": n},
                }
                for _ in range(5):
                    answer = http.post("/v1/generations", json=body)
                    if answer.status_code == 202:
                        return
                    time.sleep(0.2)
                answer.raise_for_status()

            started = time.time()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(submit, range(args.count)))
            submitted = time.time() - started
            deadline = time.monotonic() + max(120.0, args.count * 0.5)
            while receipts.count() < args.count and time.monotonic() < deadline:
                time.sleep(0.1)
        if receipts.count() < args.count:
            explain_missing(env.database_url)
    server.shutdown()
    return report(args, receipts, submitted, postgres, load_before)


def explain_missing(database_url: str) -> None:
    """What became of the generations and deliveries when some never arrived."""
    with psycopg.connect(database_url) as conn:
        statuses = conn.execute(
            "SELECT status, count(*) FROM proj_generations.generations GROUP BY 1 ORDER BY 1"
        ).fetchall()
        deliveries = conn.execute(
            "SELECT status, count(*) FROM proj_webhooks.deliveries GROUP BY 1 ORDER BY 1"
        ).fetchall()
        messages = conn.execute("SELECT count(*) FROM proj_webhooks.events").fetchone()
    print(
        f"not all arrived: generations by status {dict(statuses)}; "
        f"deliveries by status {dict(deliveries)}; messages {messages[0] if messages else 0}"
    )


def report(
    args: argparse.Namespace,
    receipts: Receipts,
    submitted: float,
    postgres: str,
    load_before: tuple[float, float, float],
) -> int:
    arrivals = sorted(receipts.arrivals.values())
    latencies = sorted((arrived - event_at) * 1000 for arrived, event_at in arrivals)
    received = len(arrivals)
    first, last = (arrivals[0][0], arrivals[-1][0]) if arrivals else (0.0, 0.0)
    events = sorted(event_at for _, event_at in arrivals)
    per_s = received / (last - first) if last > first else float("nan")
    events_per_s = received / (events[-1] - events[0]) if len(events) > 1 else float("nan")
    rows = [
        [
            received,
            receipts.requests,
            percentile(latencies, 0.5),
            percentile(latencies, 0.99),
            per_s,
            events_per_s,
            submitted,
        ]
    ]
    print()
    print(
        f"generation.completed -> receipt, one endpoint, {args.count} generations "
        f"from {args.clients} clients"
    )
    print(
        table(
            [
                "received",
                "requests",
                "p50 ms",
                "p99 ms",
                "deliveries/s",
                "events/s",
                "submit s",
            ],
            rows,
        )
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    path = write_result(
        NAME,
        {
            "postgres": postgres,
            "count": args.count,
            "received": received,
            "requests": receipts.requests,
            "latency_ms": {
                "p50": percentile(latencies, 0.5),
                "p99": percentile(latencies, 0.99),
            },
            "deliveries_per_s": per_s,
            "events_per_s": events_per_s,
            "load_average_before": load_before,
        },
    )
    print(f"written to {path}")
    return 0 if received == args.count else 1


if __name__ == "__main__":
    raise SystemExit(main())
