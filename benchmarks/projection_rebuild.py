"""Projection catch-up and rebuild rate (events/s) for the ledger projection, against raw reads.

What it measures
    The ledger projection (``credit_balances``, ``credit_holds``, ``ledger_entries``) built from
    ``--events`` billing events (default 50,000: ``--users`` accounts, each opened, funded, then
    holds captured or released and top-ups), all measured in the same run:

    a. raw read: ``recorder.select_notifications(start, 1000)`` over the whole log, no decoding;
       and read + decode (``billing.mapper.to_domain_event`` on every notification);
    b. catch-up: a fresh ``ProjectionRunner`` (``container.projection("ledger")``) on an empty
       ``proj_ledger`` schema (dropped before each repeat, tables created before the clock
       starts) running ``catch_up()`` from position 0, for each ``--batch-sizes``;
    c. rebuild: ``projections.admin.rebuild(live, fresh)`` with ``fresh`` on
       ``proj_ledger_rebuild`` (the operator command's path: fresh schema, catch up, swap in
       under the exclusive lock), timed as a whole including its DDL.

    Rates are events seeded / seconds; ratios are to the raw read rate of the same repeat.
    Seeding (up to 100 aggregates, a few hundred events, per ``save()`` call) is not measured.

Command
    .venv/bin/python -m benchmarks.projection_rebuild [--events 50000] [--users 500]
        [--repeats 5] [--batch-sizes 500,1000,2000]

Target
    rebuild >= 10,000 events/s.

Output: a table of medians over the repeats and ``benchmarks/results/projection_rebuild.json``.
"""

from __future__ import annotations

import argparse
import random
import uuid
from collections.abc import Sequence
from typing import Any

from psycopg.sql import SQL, Identifier

from benchmarks._support import (
    Timer,
    argument_parser,
    bench_environment,
    median,
    redacted,
    server_version,
    table,
    write_result,
)
from domain.billing import CreditAccount
from domain.credits import Cause, to_units
from interfaces.bootstrap import Container, build
from projections import admin
from projections.runner import ProjectionRunner

NAME = "projection_rebuild"
LIVE = "proj_ledger"
SCRATCH = "proj_ledger_rebuild"
TARGET_REBUILD_EVENTS_PER_S = 10_000
READ_PAGE = 1000
# Aggregates per save() while seeding. Each save carries at most a few events per aggregate,
# a few hundred rows in all: one save() of thousands of events can hang for ever in psycopg's
# pipeline mode (the library inserts events in a pipeline), seen here from ~5,000 events on a
# Unix socket.
SAVE_CHUNK = 100


# -- seeding ----------------------------------------------------------------------------------


def seed(c: Container, events: int, users: int, rng: random.Random) -> int:
    """Saves about ``events`` events on ``users`` new accounts; returns the log's head."""

    def save_all(accounts: list[CreditAccount]) -> None:
        for i in range(0, len(accounts), SAVE_CHUNK):
            c.billing.save(*accounts[i : i + SAVE_CHUNK])

    accounts = [CreditAccount.open(uuid.uuid4()) for _ in range(users)]
    for account in accounts:
        account.deposit("grant", to_units(1_000_000), Cause("signup", str(account.user_id)))
    save_all(accounts)
    made = 2 * users
    while made < events:
        for account in accounts:
            if made >= events:
                break
            roll = rng.random()
            if roll < 0.10 or events - made < 2:
                cause = Cause("purchase", str(uuid.uuid4()))
                account.deposit("purchase", to_units(5), cause)
                made += 1
            else:
                hold_id = account.place_hold(
                    to_units("1.5"), Cause("generation", str(uuid.uuid4()))
                )
                if roll < 0.30:
                    account.release(hold_id)
                else:
                    account.capture(hold_id, to_units(1))
                made += 2
        save_all(accounts)
    return c.billing.recorder.max_notification_id() or 0


# -- the measurements -------------------------------------------------------------------------


def read_log(c: Container, *, decode: bool) -> tuple[int, float]:
    recorder, mapper = c.billing.recorder, c.billing.mapper
    count = 0
    start = 1
    with Timer() as timer:
        while True:
            page = recorder.select_notifications(start, READ_PAGE)
            if decode:
                for notification in page:
                    mapper.to_domain_event(notification)
            count += len(page)
            if len(page) < READ_PAGE:
                break
            start = page[-1].id + 1
    return count, timer.seconds


def drop_schema(c: Container, schema: str) -> None:
    with c.pool.connection() as conn:
        conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


def close(runner: ProjectionRunner) -> None:
    runner.view.datastore.close()


def with_batch_size(runner: ProjectionRunner, batch_size: int) -> ProjectionRunner:
    runner.batch_size = batch_size
    return runner


def catch_up(c: Container, batch_size: int, head: int) -> float:
    """Seconds for a fresh runner to catch up from 0 (tables made before the clock starts)."""
    drop_schema(c, LIVE)
    runner = with_batch_size(c.projection("ledger"), batch_size)
    try:
        runner.start()
        with Timer() as timer:
            position = runner.catch_up()
    finally:
        close(runner)
    if position != head:
        raise RuntimeError(f"catch-up stopped at {position}, the head is {head}")
    return timer.seconds


def rebuild(c: Container, head: int) -> float:
    """Seconds for ``admin.rebuild`` of the (caught-up) live projection, swap included."""
    live = c.projection("ledger")
    fresh = c.projection("ledger", schema=SCRATCH)
    try:
        live.start()
        with Timer() as timer:
            position = admin.rebuild(live, fresh)
    finally:
        close(live)
        close(fresh)
    if position != head:
        raise RuntimeError(f"rebuild ended at {position}, the head is {head}")
    return timer.seconds


def projected_rows(c: Container) -> dict[str, int]:
    counts = {}
    with c.pool.connection() as conn:
        for name in ("ledger_entries", "credit_balances", "credit_holds"):
            row = conn.execute(
                SQL("SELECT count(*) FROM {}.{}").format(Identifier(LIVE), Identifier(name))
            ).fetchone()
            counts[name] = int(row[0]) if row else 0
    return counts


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--events", type=int, default=50_000, help="events to seed")
    parser.add_argument("--users", type=int, default=500, help="accounts to seed them on")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--batch-sizes",
        default="500,1000,2000",
        help="comma-separated catch-up batch sizes (the runner's default is 1000)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not args.batch_sizes or min(args.batch_sizes) <= 0:
        parser.error("--batch-sizes must list positive integers")
    if args.events < 2 * args.users:
        parser.error("--events must be at least 2 x --users (each account opens and is funded)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with bench_environment(NAME) as env:
        c = build(env.settings)
        try:
            return measure(args, c, env.database_url)
        finally:
            c.close()


def measure(args: argparse.Namespace, c: Container, database_url: str) -> int:
    print(f"{NAME}: PostgreSQL {server_version(database_url)} at {redacted(database_url)}")
    with Timer() as seeding:
        head = seed(c, args.events, args.users, random.Random(args.seed))
    events, _ = read_log(c, decode=False)
    print(f"seeded {events:,} events on {args.users:,} accounts in {seeding.seconds:.1f} s")

    # Warm-up (not recorded): page cache, prepared statements, imports.
    read_log(c, decode=True)
    catch_up(c, 1000, head)

    raw: list[float] = []
    decoded: list[float] = []
    catch: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    rebuilt: list[float] = []
    for repeat in range(args.repeats):
        n, seconds = read_log(c, decode=False)
        raw.append(n / seconds)
        n, seconds = read_log(c, decode=True)
        decoded.append(n / seconds)
        for batch_size in args.batch_sizes:
            catch[batch_size].append(events / catch_up(c, batch_size, head))
        rebuilt.append(events / rebuild(c, head))  # from the catch-up just made
        print(
            f"  repeat {repeat + 1}/{args.repeats}: raw {raw[-1]:,.0f}/s  "
            f"read+decode {decoded[-1]:,.0f}/s  "
            + "  ".join(f"catch-up[{b}] {catch[b][-1]:,.0f}/s" for b in args.batch_sizes)
            + f"  rebuild {rebuilt[-1]:,.0f}/s"
        )

    def ratios(values: list[float]) -> list[float]:
        return [v / r for v, r in zip(values, raw, strict=True)]

    series: list[tuple[str, list[float]]] = [
        ("raw read (select_notifications)", raw),
        ("read + decode", decoded),
        *((f"catch-up, batch {b}", catch[b]) for b in args.batch_sizes),
        ("rebuild (admin.rebuild)", rebuilt),
    ]
    rows = []
    results: dict[str, Any] = {}
    for label, values in series:
        ratio = median(ratios(values))
        rows.append([label, median(values), min(values), max(values), ratio])
        results[label] = {
            "events_per_s_median": median(values),
            "events_per_s": values,
            "ratio_to_raw_read_median": ratio,
            "ratios_to_raw_read": ratios(values),
        }
    rebuild_median = median(rebuilt)
    meets = rebuild_median >= TARGET_REBUILD_EVENTS_PER_S
    rows_after = projected_rows(c)
    print()
    print(
        f"ledger projection, {events:,} events, medians of {args.repeats} repeats "
        f"(ratio = rate / raw read rate of the same repeat)"
    )
    print(table(["measurement", "events/s", "min", "max", "ratio to raw"], rows))
    print(
        f"target: rebuild >= {TARGET_REBUILD_EVENTS_PER_S:,} events/s -> median "
        f"{rebuild_median:,.0f} events/s: {'met' if meets else 'NOT met'}"
    )
    print(
        "rows: "
        + ", ".join(f"{name} {count:,}" for name, count in rows_after.items())
        + f"; seconds per rebuild (median) {events / rebuild_median:.2f}"
    )
    path = write_result(
        NAME,
        {
            "config": {
                "events": events,
                "users": args.users,
                "repeats": args.repeats,
                "batch_sizes": args.batch_sizes,
                "seed": args.seed,
                "read_page": READ_PAGE,
            },
            "postgres": server_version(database_url),
            "seed_seconds": seeding.seconds,
            "results": results,
            "target": {
                "rebuild_events_per_s": TARGET_REBUILD_EVENTS_PER_S,
                "rebuild_median": rebuild_median,
                "met": meets,
            },
            "projected_rows": rows_after,
        },
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
