"""Reads of the provider_health projection: calls, success rate and latency per provider and
per model over recent windows, their last errors, and a series for sparklines.

Everything is computed from the projected calls (PostgreSQL), never from a process's memory,
so every API process answers the same. ``now`` is the end of every window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from projections.provider_health import ANSWERED, ProviderHealthView

#: The windows of the summary, by name.
WINDOWS: Mapping[str, timedelta] = {
    "last_5m": timedelta(minutes=5),
    "last_1h": timedelta(hours=1),
}
#: How far back a provider's last error is looked for.
ERROR_LOOKBACK = timedelta(hours=24)
#: The sparkline series: this many buckets of this width, the last one ending ``now``.
BUCKET = timedelta(minutes=15)
BUCKETS = 12

#: A provider's figures (``model`` ``None``) or one model's: what the queries are keyed by.
Key = tuple[str, str | None]
_FAILED = "outcome NOT IN ({})".format(", ".join(f"'{o}'" for o in ANSWERED))


@dataclass(frozen=True, slots=True)
class Window:
    calls: int
    succeeded: int  # produced a result
    rejected: int  # the provider refused the request (its safety filter, or the input)
    failed: int  # unavailable, timed out, rate limited, failed at the provider
    #: ``succeeded / calls``; ``None`` without calls.
    success_rate: float | None
    #: Latency of the calls that succeeded; ``None`` without any.
    p50_ms: float | None
    p95_ms: float | None


EMPTY = Window(0, 0, 0, 0, None, None, None)


@dataclass(frozen=True, slots=True)
class CallError:
    generation_id: UUID
    provider: str
    model: str
    kind: str
    message: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Bucket:
    start: datetime
    calls: int
    failed: int
    p50_ms: float | None
    p95_ms: float | None


def _schema() -> str:
    return ProviderHealthView.live_schema()


def _key(row: Mapping[str, Any]) -> Key:
    return row["provider"], None if row["all_models"] else row["model"]


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


async def summary(pool: AsyncConnectionPool, now: datetime) -> dict[Key, dict[str, Window]]:
    """Per provider and per (provider, model) with calls in the longest window: each window's
    figures (a window without calls is :data:`EMPTY`)."""
    columns, params = [], {"now": now, "since": now - max(WINDOWS.values())}
    for n, span in enumerate(WINDOWS.values()):
        params[f"since_{n}"] = now - span
        within = f"created_at > %(since_{n})s"
        produced = f"{within} AND outcome = 'ok'"
        columns += [
            f"count(*) FILTER (WHERE {within}) AS calls_{n}",
            f"count(*) FILTER (WHERE {produced}) AS ok_{n}",
            f"count(*) FILTER (WHERE {within} AND outcome = 'rejected') AS rejected_{n}",
            f"count(*) FILTER (WHERE {within} AND {_FAILED}) AS failed_{n}",
            f"percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE {produced}) "
            f"AS p50_{n}",
            f"percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE {produced}) "
            f"AS p95_{n}",
        ]
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT provider, model, grouping(model) = 1 AS all_models, {', '.join(columns)} "
            f"FROM {_schema()}.calls WHERE created_at > %(since)s AND created_at <= %(now)s "
            "GROUP BY GROUPING SETS ((provider), (provider, model))",
            params,
        )
        rows = await cur.fetchall()
    found: dict[Key, dict[str, Window]] = {}
    for row in rows:
        windows = {}
        for n, name in enumerate(WINDOWS):
            calls, ok = int(row[f"calls_{n}"]), int(row[f"ok_{n}"])
            windows[name] = Window(
                calls=calls,
                succeeded=ok,
                rejected=int(row[f"rejected_{n}"]),
                failed=int(row[f"failed_{n}"]),
                success_rate=round(ok / calls, 4) if calls else None,
                p50_ms=_ms(row[f"p50_{n}"]),
                p95_ms=_ms(row[f"p95_{n}"]),
            )
        found[_key(row)] = windows
    return found


def _error(row: Mapping[str, Any]) -> CallError:
    return CallError(
        generation_id=row["generation_id"],
        provider=row["provider"],
        model=row["model"],
        kind=row["outcome"],
        message=row["error"] or row["outcome"],
        at=row["created_at"],
    )


async def last_errors(pool: AsyncConnectionPool, now: datetime) -> dict[Key, CallError]:
    """The latest failed call of each provider and of each of its models within
    :data:`ERROR_LOOKBACK`."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT DISTINCT ON (provider, model) provider, model, generation_id, outcome, error, "
            f"created_at FROM {_schema()}.calls WHERE {_FAILED} "
            "AND created_at > %(since)s AND created_at <= %(now)s "
            "ORDER BY provider, model, created_at DESC, position DESC",
            {"since": now - ERROR_LOOKBACK, "now": now},
        )
        rows = await cur.fetchall()
    found: dict[Key, CallError] = {}
    for row in rows:
        error = _error(row)
        found[(error.provider, error.model)] = error
        latest = found.get((error.provider, None))
        if latest is None or error.at > latest.at:
            found[(error.provider, None)] = error
    return found


async def recent_errors(
    pool: AsyncConnectionPool, now: datetime, *, since: timedelta, limit: int = 50
) -> list[CallError]:
    """The latest failed calls within ``since`` of ``now``, newest first."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT provider, model, generation_id, outcome, error, created_at "
            f"FROM {_schema()}.calls WHERE {_FAILED} "
            "AND created_at > %(since)s AND created_at <= %(now)s "
            "ORDER BY created_at DESC, position DESC LIMIT %(limit)s",
            {"since": now - since, "now": now, "limit": limit},
        )
        return [_error(row) for row in await cur.fetchall()]


async def series(
    pool: AsyncConnectionPool, now: datetime, *, bucket: timedelta = BUCKET, buckets: int = BUCKETS
) -> dict[Key, list[Bucket]]:
    """Per provider and per (provider, model): ``buckets`` consecutive buckets of ``bucket``,
    oldest first, the last ending at ``now`` (a bucket without calls has zeros and no
    latency)."""
    start = now - bucket * buckets
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT provider, model, grouping(model) = 1 AS all_models, "
            "floor(extract(epoch FROM created_at - %(start)s) / %(width)s)::integer AS n, "
            f"count(*) AS calls, count(*) FILTER (WHERE {_FAILED}) AS failed, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) "
            "FILTER (WHERE outcome = 'ok') AS p50, "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) "
            "FILTER (WHERE outcome = 'ok') AS p95 "
            f"FROM {_schema()}.calls WHERE created_at > %(start)s AND created_at <= %(now)s "
            "GROUP BY GROUPING SETS ((provider, n), (provider, model, n))",
            {"start": start, "now": now, "width": bucket.total_seconds()},
        )
        rows = await cur.fetchall()
    found: dict[Key, list[Bucket]] = {}
    for row in rows:
        filled = found.setdefault(_key(row), empty_series(now, bucket=bucket, buckets=buckets))
        n = min(int(row["n"]), buckets - 1)  # a call exactly at ``now`` is in the last bucket
        filled[n] = Bucket(
            filled[n].start, int(row["calls"]), int(row["failed"]), _ms(row["p50"]), _ms(row["p95"])
        )
    return found


def empty_series(
    now: datetime, *, bucket: timedelta = BUCKET, buckets: int = BUCKETS
) -> list[Bucket]:
    start = now - bucket * buckets
    return [Bucket(start + bucket * n, 0, 0, None, None) for n in range(buckets)]
