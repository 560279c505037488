"""Projection catch-up and rebuild rates (events/s) against raw reads of the same log: the
ledger and the generations projections.

What it measures
    For each of ``--projections`` (default both), on a log of ``--events`` events (default
    50,000) seeded for it, all in the same run:

    * ledger: ``--users`` credit accounts, each opened and funded, then holds captured or
      released and top-ups (``credit_balances``, ``credit_holds``, ``ledger_entries``);
    * generations: generations of ``--users`` users, most requested -> funded -> queued ->
      submitted -> produced -> processed -> completed, some falling back, deferred, failed
      or cancelled (the ``generations`` rows and their live ``feed``);

    a. raw read: ``recorder.select_notifications(start, 1000)`` over the whole log, no decoding;
       and read + decode (``mapper.to_domain_event`` on every notification);
    b. catch-up: a fresh ``ProjectionRunner`` (``container.projection(name)``) on an empty
       live schema (dropped before each repeat, tables created before the clock starts)
       running ``catch_up()`` from position 0, for each ``--batch-sizes`` (the live path);
    c. rebuild: ``projections.admin.rebuild(live, fresh)`` with ``fresh`` on
       ``proj_<name>_rebuild`` (the operator command's path: fresh schema, built in bulk,
       swapped in under the exclusive lock), timed as a whole including its DDL.

    Rates are events seeded / seconds; ratios are to the raw read rate of the same repeat.
    Seeding (up to 100 aggregates per ``save()`` call) is not measured.

Command
    .venv/bin/python -m benchmarks.projection_rebuild [--events 50000] [--users 500]
        [--repeats 5] [--batch-sizes 500,1000,2000] [--projections ledger,generations]

Target
    rebuild >= 30% of the raw read rate of the same run (median of the per-repeat ratios),
    for each projection.

Output: a table of medians over the repeats per projection and
``benchmarks/results/projection_rebuild.json``.
"""

from __future__ import annotations

import argparse
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
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
from domain.generation import Generation
from domain.ids import uuid7
from interfaces.bootstrap import Container, build
from projections import admin
from projections.runner import ProjectionRunner

NAME = "projection_rebuild"
TARGET_REBUILD_RATIO = 0.30
READ_PAGE = 1000
# Aggregates per save() while seeding. Each save carries at most a few events per aggregate,
# a few hundred rows in all: one save() of thousands of events can hang for ever in psycopg's
# pipeline mode (the library inserts events in a pipeline), seen here from ~5,000 events on a
# Unix socket.
SAVE_CHUNK = 100


# -- seeding ----------------------------------------------------------------------------------


def save_all(app: Application[uuid.UUID], aggregates: Sequence[Aggregate]) -> None:
    for i in range(0, len(aggregates), SAVE_CHUNK):
        app.save(*aggregates[i : i + SAVE_CHUNK])


def seed_ledger(c: Container, events: int, users: int, rng: random.Random) -> None:
    """Saves about ``events`` events on ``users`` new accounts."""
    accounts = [CreditAccount.open(uuid.uuid4()) for _ in range(users)]
    for account in accounts:
        account.deposit("grant", to_units(1_000_000), Cause("signup", str(account.user_id)))
    save_all(c.billing, accounts)
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
        save_all(c.billing, accounts)


def _life(g: Generation, roll: float) -> None:
    """One generation's life after its request: mostly a completed one (7 events in all)."""
    g.fund(uuid.uuid4())
    g.queue()
    if roll < 0.05:
        g.fail("provider_error", "the provider answered 500")
        return
    if roll < 0.08:
        g.request_cancel()
        return
    if roll < 0.15:
        g.fall_back("flux-dev", "fal", "outage", params={"seed": 7}, negative_prompt=None, cost=1)
    if roll < 0.20:
        now = datetime.now(UTC)
        g.defer("rate limited", now=now, retry_at=now, give_up_at=now + timedelta(minutes=10))
    g.submitted(f"job-{g.id}", 1)
    g.produced(f"results/{g.id}.png", 1024, 1024, "image/png", 1_234_567, provider_ms=2_400)
    g.process(
        [{"kind": "preview", "storage_key": f"previews/{g.id}.webp", "width": 512}],
        "LEHV6nWB2yk8pyo0adR*.7kCMdnj",
        0.81,
        0.02,
        "clf-1",
    )
    g.complete(to_units("0.03"))


def seed_generations(c: Container, events: int, users: int, rng: random.Random) -> None:
    """Saves about ``events`` events: generations of ``users`` users, each whole life in one
    ``save()`` with 99 others (so the log interleaves them, a few hundred events at a time)."""
    user_ids = [uuid.uuid4() for _ in range(users)]
    made = 0
    while made < events:
        batch = []
        for _ in range(SAVE_CHUNK):
            g = Generation.request(
                generation_id=uuid7(),
                user_id=rng.choice(user_ids),
                model="flux-schnell",
                provider="replicate",
                prompt="a lighthouse at dusk, volumetric light, 35mm",
                negative_prompt=None,
                params={"aspect_ratio": "16:9", "seed": rng.randrange(1 << 31), "steps": 4},
                output_format="webp",
                quote=to_units("0.03"),
                allow_fallback=True,
                fingerprint=f"{rng.getrandbits(64):016x}",
                request_hash=f"{rng.getrandbits(64):016x}",
            )
            _life(g, rng.random())
            made += len(g.pending_events)
            batch.append(g)
        c.generations.save(*batch)


@dataclass(frozen=True)
class Subject:
    """A projection measured: its name, the application whose log it follows, how that log
    is seeded, and the tables whose rows are counted afterwards."""

    name: str
    app: Callable[[Container], Application[uuid.UUID]]
    seed: Callable[[Container, int, int, random.Random], None]
    tables: tuple[str, ...]

    @property
    def live(self) -> str:
        return f"proj_{self.name}"

    @property
    def scratch(self) -> str:
        return f"proj_{self.name}_rebuild"


SUBJECTS = {
    "ledger": Subject(
        "ledger",
        lambda c: c.billing,
        seed_ledger,
        ("ledger_entries", "credit_balances", "credit_holds"),
    ),
    "generations": Subject(
        "generations", lambda c: c.generations, seed_generations, ("generations", "feed")
    ),
}


# -- the measurements -------------------------------------------------------------------------


def read_log(app: Application[uuid.UUID], *, decode: bool) -> tuple[int, float]:
    recorder, mapper = app.recorder, app.mapper
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


def catch_up(c: Container, subject: Subject, batch_size: int, head: int) -> float:
    """Seconds for a fresh runner to catch up from 0 (tables made before the clock starts)."""
    drop_schema(c, subject.live)
    runner = c.projection(subject.name)
    runner.batch_size = batch_size
    try:
        runner.start()
        with Timer() as timer:
            position = runner.catch_up()
    finally:
        close(runner)
    if position != head:
        raise RuntimeError(f"catch-up stopped at {position}, the head is {head}")
    return timer.seconds


def rebuild(c: Container, subject: Subject, head: int) -> float:
    """Seconds for ``admin.rebuild`` of the (caught-up) live projection, swap included."""
    live = c.projection(subject.name)
    fresh = c.projection(subject.name, schema=subject.scratch)
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


def projected_rows(c: Container, subject: Subject) -> dict[str, int]:
    counts = {}
    with c.pool.connection() as conn:
        for name in subject.tables:
            row = conn.execute(
                SQL("SELECT count(*) FROM {}.{}").format(Identifier(subject.live), Identifier(name))
            ).fetchone()
            counts[name] = int(row[0]) if row else 0
    return counts


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--events", type=int, default=50_000, help="events to seed per log")
    parser.add_argument("--users", type=int, default=500, help="accounts / users to seed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--batch-sizes",
        default="500,1000,2000",
        help="comma-separated catch-up batch sizes (the runner's default is 1000)",
    )
    parser.add_argument(
        "--projections", default="ledger,generations", help="comma-separated: ledger,generations"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if not args.batch_sizes or min(args.batch_sizes) <= 0:
        parser.error("--batch-sizes must list positive integers")
    args.projections = [p.strip() for p in args.projections.split(",") if p.strip()]
    if not args.projections or set(args.projections) - set(SUBJECTS):
        parser.error(f"--projections must list some of {', '.join(SUBJECTS)}")
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
    results = {
        name: measure_one(args, c, SUBJECTS[name], random.Random(args.seed))
        for name in args.projections
    }
    print()
    for name, result in results.items():
        target = result["target"]
        print(
            f"{name}: target rebuild >= {TARGET_REBUILD_RATIO:.0%} of raw read -> "
            f"{target['rebuild_ratio_median']:.0%} "
            f"({target['rebuild_events_per_s_median']:,.0f} events/s): "
            f"{'MET' if target['met'] else 'NOT MET'}"
        )
    path = write_result(
        NAME,
        {
            "config": {
                "events": args.events,
                "users": args.users,
                "repeats": args.repeats,
                "batch_sizes": args.batch_sizes,
                "seed": args.seed,
                "read_page": READ_PAGE,
            },
            "postgres": server_version(database_url),
            "projections": results,
        },
    )
    print(f"written {path}")
    return 0


def measure_one(
    args: argparse.Namespace, c: Container, subject: Subject, rng: random.Random
) -> dict[str, Any]:
    app = subject.app(c)
    with Timer() as seeding:
        subject.seed(c, args.events, args.users, rng)
    head = app.recorder.max_notification_id() or 0
    events, _ = read_log(app, decode=False)
    print(f"{subject.name}: seeded {events:,} events in {seeding.seconds:.1f} s")

    # Warm-up (not recorded): page cache, prepared statements, imports.
    read_log(app, decode=True)
    catch_up(c, subject, 1000, head)

    raw: list[float] = []
    decoded: list[float] = []
    catch: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    rebuilt: list[float] = []
    for repeat in range(args.repeats):
        n, seconds = read_log(app, decode=False)
        raw.append(n / seconds)
        n, seconds = read_log(app, decode=True)
        decoded.append(n / seconds)
        for batch_size in args.batch_sizes:
            catch[batch_size].append(events / catch_up(c, subject, batch_size, head))
        rebuilt.append(events / rebuild(c, subject, head))  # from the catch-up just made
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
        ("read + decode (mapper)", decoded),
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
    rebuild_ratio = median(ratios(rebuilt))
    meets = rebuild_ratio >= TARGET_REBUILD_RATIO
    rows_after = projected_rows(c, subject)
    print()
    print(
        f"{subject.name} projection, {events:,} events, medians of {args.repeats} repeats "
        f"(ratio = rate / raw read rate of the same repeat)"
    )
    print(table(["measurement", "events/s", "min", "max", "ratio to raw"], rows))
    print(
        f"target: rebuild >= {TARGET_REBUILD_RATIO:.0%} of raw read -> median ratio "
        f"{rebuild_ratio:.3f}: {'MET' if meets else 'NOT MET'}"
    )
    print(
        "rows: "
        + ", ".join(f"{name} {count:,}" for name, count in rows_after.items())
        + f"; seconds per rebuild (median) {events / median(rebuilt):.2f}"
    )
    print()
    return {
        "events": events,
        "seed_seconds": seeding.seconds,
        "results": results,
        "target": {
            "rebuild_ratio_to_raw": TARGET_REBUILD_RATIO,
            "rebuild_ratio_median": rebuild_ratio,
            "rebuild_events_per_s_median": median(rebuilt),
            "met": meets,
        },
        "projected_rows": rows_after,
    }


if __name__ == "__main__":
    raise SystemExit(main())
