"""Marketplace browse and search latency over a large catalogue.

What it measures
    ``projections.marketplace_queries.listings`` (the code ``GET /v1/listings`` calls) over
    ``--listings`` rows (default 100,000) of the marketplace projection's ``listings`` table, in
    a scratch database of its own: the projection's tables are created as the platform creates
    them, then filled straight with ``COPY`` (no events) and ``ANALYZE``d. Texts are made from a
    word list generated in code (syllables; word frequencies follow Zipf's law, as in real
    text); prices, install counts, ages and a 5% share of unlisted rows are random (seeded).

    Cases, each a page of ``--limit`` rows, run ``--repeats`` times after a warm-up, one query
    at a time on a warm pool: a one-word search (a common word), a two-word search (both words
    must match), a rare word, browse newest, sort by installs, sort by price, and the fifth page
    of browse newest through the cursors of the four before. p50 and p99 per case, in ms.

Command
    .venv/bin/python -m benchmarks.listing_search [--listings 100000] [--repeats 200]
        [--limit 20] [--seed 7]

Output: a table and ``benchmarks/results/listing_search.json``. The scratch schema is dropped
afterwards, then the scratch database.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from benchmarks._support import (
    Timer,
    argument_parser,
    bench_environment,
    median,
    percentile,
    redacted,
    server_version,
    table,
    write_result,
)
from interfaces.bootstrap import build
from projections import marketplace_queries
from projections.marketplace import MarketplaceView

NAME = "listing_search"
SCHEMA = MarketplaceView.live_schema()
ONSETS = ("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "br", "st", "tr")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
CODAS = ("", "n", "r", "l", "s", "th", "m")
COLUMNS = (
    "id",
    "creator_id",
    "workflow_id",
    "version",
    "title",
    "description",
    "price",
    "status",
    "installs",
    "created_at",
    "updated_at",
    "event_version",
)


def word_list(size: int, rng: random.Random) -> list[str]:
    """``size`` distinct made-up words of two or three syllables."""
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice((2, 2, 3))
        words.add(
            "".join(
                rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                for _ in range(syllables)
            )
        )
    return sorted(words, key=lambda _: rng.random())


def rows(n: int, words: list[str], rng: random.Random) -> list[tuple[Any, ...]]:
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf
    now = datetime.now(UTC)
    creators = [uuid.uuid4() for _ in range(max(1, n // 50))]
    made = []
    for _ in range(n):
        title = " ".join(rng.choices(words, weights, k=rng.randint(2, 6)))
        description = " ".join(rng.choices(words, weights, k=rng.randint(15, 60)))
        created = now - timedelta(seconds=rng.randint(0, 365 * 86_400))
        made.append(
            (
                uuid.uuid4(),
                rng.choice(creators),
                uuid.uuid4(),
                rng.randint(1, 5),
                title.capitalize(),
                description.capitalize() + ".",
                Decimal(rng.randint(0, 1_000_000)) / 10_000,
                "unlisted" if rng.random() < 0.05 else "listed",
                int(rng.paretovariate(1.2)) - 1,
                created,
                created + timedelta(seconds=rng.randint(0, 86_400)),
                rng.randint(1, 6),
            )
        )
    return made


def fill(database_url: str, data: list[tuple[Any, ...]]) -> float:
    """COPYs the rows into the listings table and analyzes it; returns the seconds it took."""
    with psycopg.connect(database_url) as conn, Timer() as timer:
        with conn.cursor() as cur:
            statement = f"COPY {SCHEMA}.listings ({', '.join(COLUMNS)}) FROM STDIN"
            with cur.copy(statement) as copy:
                for row in data:
                    copy.write_row(row)
        conn.commit()
        conn.execute(f"ANALYZE {SCHEMA}.listings")
        conn.commit()
    return timer.seconds


def matches(database_url: str, q: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {SCHEMA}.listings WHERE status = 'listed' "
            "AND search @@ websearch_to_tsquery('english', %s)",
            [q],
        ).fetchone()
    return int(row[0]) if row else 0


def rare_word(words: list[str], database_url: str) -> str:
    """A word of the tail that some listed row has (a handful of matches)."""
    for word in reversed(words):
        if 0 < matches(database_url, word) <= 20:
            return word
    return words[-1]


Query = Callable[[AsyncConnectionPool], Awaitable[Any]]


async def page_five_cursor(pool: AsyncConnectionPool, limit: int) -> str | None:
    cursor = None
    for _ in range(4):
        _, cursor = await marketplace_queries.listings(pool, None, None, limit, cursor)
    return cursor


async def measure(
    database_url: str, cases: dict[str, tuple[str | None, str | None]], limit: int, repeats: int
) -> dict[str, list[float]]:
    async with AsyncConnectionPool(
        database_url, min_size=1, max_size=1, kwargs={"autocommit": True}
    ) as pool:
        cursor = await page_five_cursor(pool, limit)
        calls: dict[str, Query] = {
            name: (lambda p, q=q, s=s: marketplace_queries.listings(p, q, s, limit, None))
            for name, (q, s) in cases.items()
        }
        calls["page 5 (newest, cursors)"] = lambda p: marketplace_queries.listings(
            p, None, None, limit, cursor
        )
        timings: dict[str, list[float]] = {}
        for name, call in calls.items():
            for _ in range(max(5, repeats // 20)):
                await call(pool)
            samples = []
            for _ in range(repeats):
                with Timer() as timer:
                    page, _ = await call(pool)
                samples.append(timer.seconds * 1000)
            if not page:
                raise RuntimeError(f"{name}: an empty page (nothing was measured)")
            timings[name] = sorted(samples)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with bench_environment(NAME) as env:
        container = build(env.settings)  # migrates and creates every projection's tables
        container.close()
        try:
            words = word_list(5_000, rng)
            copied = fill(env.database_url, rows(args.listings, words, rng))
            rare = rare_word(words, env.database_url)
            cases: dict[str, tuple[str | None, str | None]] = {
                f"one word ({words[3]})": (words[3], None),
                f"two words ({words[8]} {words[15]})": (f"{words[8]} {words[15]}", None),
                f"rare word ({rare})": (rare, None),
                "browse newest": (None, None),
                "sort installs": (None, "installs"),
                "sort price": (None, "price"),
            }
            found = {name: matches(env.database_url, q) for name, (q, _) in cases.items() if q}
            timings = asyncio.run(measure(env.database_url, cases, args.limit, args.repeats))
        finally:
            with psycopg.connect(env.database_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        results = {
            name: {
                "p50_ms": median(samples),
                "p99_ms": percentile(samples, 0.99),
                "matches": found.get(name),
            }
            for name, samples in timings.items()
        }
        print(
            f"{args.listings:,} listings copied and analyzed in {copied:.1f} s; "
            f"pages of {args.limit}, {args.repeats} repeats each"
        )
        print(
            table(
                ["case", "matches", "p50 ms", "p99 ms"],
                [
                    [n, r["matches"] if r["matches"] is not None else "-", r["p50_ms"], r["p99_ms"]]
                    for n, r in results.items()
                ],
            )
        )
        path = write_result(
            NAME,
            {
                "database": redacted(env.server_url),
                "server_version": server_version(env.database_url),
                "listings": args.listings,
                "limit": args.limit,
                "repeats": args.repeats,
                "seed": args.seed,
                "copy_and_analyze_s": copied,
                "cases": results,
            },
        )
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
