"""Ledger commands per second through the application on PostgreSQL, against a plain psycopg loop.

What it measures
    Commands per second through ``BillingApplication`` (``place_hold``, ``capture``, ``release``,
    ``deposit``: each one loads the ``CreditAccount``, calls it and saves once, in its own
    transaction), and as a ratio to a plain psycopg loop in which each iteration is one
    transaction inserting one row into a table like the event store's (``uuid``, ``int``
    version, ``text`` topic, ``bytea`` of ``--payload-bytes``) and committing. Both sides do the
    same number of operations with the same number of threads, interleaved in the same repeat,
    so each ratio is computed within one run.

    The application side works on ``--accounts`` funded accounts (each opened and funded with one
    deposit beforehand). Its mix, chosen by a seeded RNG per step: 75 % place_hold then capture
    part of it (2 commands), 15 % place_hold then release (2), 10 % deposit (1). With
    ``--threads N`` (default 4, reported for context) each thread works on its own share of the
    accounts, so no two threads ever touch the same aggregate (no optimistic-concurrency retries).

Command
    .venv/bin/python -m benchmarks.ledger_commands [--ops 3000] [--repeats 5] [--accounts 200]
        [--threads 4] [--payload-bytes 200] [--seed 1]

Target
    None fixed: the number to watch is the single-thread ratio app/baseline (how much of a bare
    single-row-commit loop the application keeps), and the commands/s themselves.

Output: a table of medians over the repeats and ``benchmarks/results/ledger_commands.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from benchmarks._support import (
    argument_parser,
    bench_environment,
    median,
    redacted,
    server_version,
    table,
    write_result,
)
from domain.credits import Cause, to_units
from interfaces.bootstrap import Container, build

NAME = "ledger_commands"
HOLD = to_units("1.5")
CAPTURE = to_units(1)
TOPUP = to_units(5)
FUNDING = to_units(1_000_000)
TOPICS = (
    "domain.billing:CreditAccount.HoldPlaced",
    "domain.billing:CreditAccount.HoldCaptured",
    "domain.billing:CreditAccount.HoldReleased",
    "domain.billing:CreditAccount.Deposited",
)
BASELINE_DDL = """
CREATE SCHEMA IF NOT EXISTS bench;
CREATE TABLE IF NOT EXISTS bench.baseline_events (
    originator_id      uuid NOT NULL,
    originator_version integer NOT NULL,
    topic              text NOT NULL,
    state              bytea NOT NULL,
    PRIMARY KEY (originator_id, originator_version)
)
"""
BASELINE_INSERT = (
    "INSERT INTO bench.baseline_events (originator_id, originator_version, topic, state) "
    "VALUES (%s, %s, %s, %s)"
)


# -- the two workloads -----------------------------------------------------------------------


def app_worker(c: Container, users: Sequence[uuid.UUID], ops: int, seed: int) -> int:
    """Runs at least ``ops`` application commands on ``users``' accounts; returns how many."""
    billing = c.billing
    rng = random.Random(seed)
    done = 0
    i = 0
    while done < ops:
        user = users[i % len(users)]
        i += 1
        roll = rng.random()
        if roll < 0.10:
            billing.deposit(user, "purchase", TOPUP, Cause("purchase", str(uuid.uuid4())))
            done += 1
            continue
        hold_id = billing.place_hold(user, HOLD, Cause("generation", str(uuid.uuid4())))
        if roll < 0.25:
            billing.release(user, hold_id)
        else:
            billing.capture(user, hold_id, CAPTURE)
        done += 2
    return done


class Baseline:
    """One row, one transaction, one commit per operation; a connection per thread."""

    def __init__(self, database_url: str, payload_bytes: int) -> None:
        self.database_url = database_url
        self.payload = os.urandom(payload_bytes)
        self.versions: dict[uuid.UUID, int] = {}
        self.lock = threading.Lock()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(BASELINE_DDL)

    def next_versions(self, ids: Sequence[uuid.UUID], ops: int) -> list[tuple[uuid.UUID, int]]:
        """The (id, version) keys the next ``ops`` inserts on ``ids`` use (never reused)."""
        keys = []
        with self.lock:
            for i in range(ops):
                originator = ids[i % len(ids)]
                version = self.versions.get(originator, 0) + 1
                self.versions[originator] = version
                keys.append((originator, version))
        return keys

    def worker(self, ids: Sequence[uuid.UUID], ops: int, seed: int) -> int:
        keys = self.next_versions(ids, ops)
        rng = random.Random(seed)
        topics = [rng.choice(TOPICS) for _ in range(ops)]
        with psycopg.connect(self.database_url) as conn:  # autocommit off
            for (originator, version), topic in zip(keys, topics, strict=True):
                conn.execute(BASELINE_INSERT, (originator, version, topic, self.payload))
                conn.commit()
        return ops


# -- running one measurement ------------------------------------------------------------------

Worker = Callable[[Sequence[uuid.UUID], int, int], int]


def timed(worker: Worker, groups: Sequence[Sequence[uuid.UUID]], ops: int, seed: int) -> float:
    """Operations per second of ``len(groups)`` threads sharing ``ops``; wall clock, start barrier.

    The setup each thread does before the barrier (connecting, picking keys) is not timed.
    """
    threads_n = len(groups)
    share = [ops // threads_n + (1 if i < ops % threads_n else 0) for i in range(threads_n)]
    barrier = threading.Barrier(threads_n + 1)
    counts = [0] * threads_n
    errors: list[BaseException] = []

    if threads_n == 1:
        start = time.perf_counter()
        counts[0] = worker(groups[0], share[0], seed)
        return counts[0] / (time.perf_counter() - start)

    def run(index: int) -> None:
        try:
            barrier.wait()
            counts[index] = worker(groups[index], share[index], seed * 1000 + index)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def split(items: Sequence[uuid.UUID], parts: int) -> list[list[uuid.UUID]]:
    return [list(items[i::parts]) for i in range(parts)]


def event_stats(c: Container) -> dict[str, Any]:
    with c.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*), avg(octet_length(state)), max(originator_version) "
            "FROM billing.billing_events"
        ).fetchone()
    if row is None:
        return {}
    return {
        "events": int(row[0]),
        "avg_state_bytes": round(float(row[1] or 0), 1),
        "max_version": int(row[2] or 0),
    }


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--ops", type=int, default=3000, help="operations per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accounts", type=int, default=200, help="funded accounts")
    parser.add_argument("--threads", type=int, default=4, help="the multi-thread variant")
    parser.add_argument("--payload-bytes", type=int, default=200, help="baseline bytea size")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.accounts < args.threads:
        parser.error("--accounts must be at least --threads")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    thread_counts = sorted({1, args.threads})
    with bench_environment(NAME) as env:
        c = build(env.settings)
        try:
            return measure(args, c, env.database_url, thread_counts)
        finally:
            c.close()


def measure(
    args: argparse.Namespace, c: Container, database_url: str, thread_counts: list[int]
) -> int:
    print(f"{NAME}: PostgreSQL {server_version(database_url)} at {redacted(database_url)}")
    users = [uuid.uuid4() for _ in range(args.accounts)]
    setup_start = time.perf_counter()
    for user in users:
        c.billing.deposit(user, "grant", FUNDING, Cause("signup", str(user)), "benchmark")
    baseline = Baseline(database_url, args.payload_bytes)
    baseline_ids = [uuid.uuid4() for _ in range(args.accounts)]
    print(f"funded {len(users)} accounts in {time.perf_counter() - setup_start:.1f} s")

    def app(groups: Sequence[Sequence[uuid.UUID]], ops: int, seed: int) -> float:
        return timed(lambda u, n, s: app_worker(c, u, n, s), groups, ops, seed)

    def base(groups: Sequence[Sequence[uuid.UUID]], ops: int, seed: int) -> float:
        return timed(baseline.worker, groups, ops, seed)

    # Warm-up: caches, prepared statements, pool connections (not recorded).
    warm = max(args.ops // 10, 4 * max(thread_counts))
    for n in thread_counts:
        app(split(users, n), warm, 0)
        base(split(baseline_ids, n), warm, 0)

    runs: dict[int, dict[str, list[float]]] = {
        n: {"app": [], "baseline": [], "ratio": []} for n in thread_counts
    }
    for repeat in range(args.repeats):
        for n in thread_counts:
            seed = args.seed * 100 + repeat
            app_rate = app(split(users, n), args.ops, seed)
            base_rate = base(split(baseline_ids, n), args.ops, seed)
            runs[n]["app"].append(app_rate)
            runs[n]["baseline"].append(base_rate)
            runs[n]["ratio"].append(app_rate / base_rate)
            print(
                f"  repeat {repeat + 1}/{args.repeats}  threads={n}: "
                f"app {app_rate:,.0f}/s  baseline {base_rate:,.0f}/s  "
                f"ratio {app_rate / base_rate:.3f}"
            )

    stats = event_stats(c)
    rows = []
    summary: dict[str, Any] = {}
    for n in thread_counts:
        app_med, base_med = median(runs[n]["app"]), median(runs[n]["baseline"])
        ratio_med = median(runs[n]["ratio"])
        rows.append([n, app_med, base_med, ratio_med, min(runs[n]["ratio"]), max(runs[n]["ratio"])])
        summary[f"threads_{n}"] = {
            "app_commands_per_s_median": app_med,
            "baseline_ops_per_s_median": base_med,
            "ratio_app_to_baseline_median": ratio_med,
            "ratio_of_medians": app_med / base_med,
            "app_commands_per_s": runs[n]["app"],
            "baseline_ops_per_s": runs[n]["baseline"],
            "ratios": runs[n]["ratio"],
        }
    print()
    print(
        f"ledger commands/s, medians of {args.repeats} repeats of {args.ops:,} operations "
        f"(ratio = app/baseline within each repeat)"
    )
    print(
        table(
            ["threads", "app cmd/s", "baseline tx/s", "ratio", "ratio min", "ratio max"],
            rows,
        )
    )
    print(
        f"event store: {stats['events']:,} events, avg state {stats['avg_state_bytes']} bytes "
        f"(baseline rows carry {args.payload_bytes}); max account version "
        f"{stats['max_version']}"
    )
    path = write_result(
        NAME,
        {
            "config": {
                "ops": args.ops,
                "repeats": args.repeats,
                "accounts": args.accounts,
                "threads": thread_counts,
                "payload_bytes": args.payload_bytes,
                "seed": args.seed,
                "mix": "75% hold+capture, 15% hold+release, 10% deposit",
            },
            "postgres": server_version(database_url),
            "results": summary,
            "event_store": stats,
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
