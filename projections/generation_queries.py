"""Queries over the generations read table: the API's (async) and the workers' and the command
line's (sync). Read-only."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from domain.generation import TERMINAL
from domain.ids import uuid7_time
from projections.generations import GenerationsView
from projections.ledger_queries import BadCursor, decode_cursor, encode_cursor

SCHEMA = GenerationsView.live_schema()
#: A generation's row is written a moment after its UUIDv7 id is made.
_ID_TO_ROW = timedelta(minutes=5)


def by_id_statement() -> str:
    """Looks one generation up by id, bounding created_at by the id's own time: one partition."""
    return (
        f"SELECT * FROM {SCHEMA}.generations WHERE id = %s AND user_id = %s "
        "AND created_at >= %s AND created_at < %s"
    )


def by_id_params(user_id: UUID, generation_id: UUID) -> list[Any]:
    made = uuid7_time(generation_id)
    return [generation_id, user_id, made - timedelta(seconds=1), made + _ID_TO_ROW]


async def generation(
    pool: AsyncConnectionPool, user_id: UUID, generation_id: UUID
) -> dict[str, Any] | None:
    if generation_id.version != 7:  # every generation id is a UUIDv7
        return None
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(by_id_statement(), by_id_params(user_id, generation_id))
        return await cur.fetchone()


async def page(
    pool: AsyncConnectionPool,
    user_id: UUID,
    limit: int,
    cursor: str | None,
    *,
    status: str | None = None,
    model: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    where: list[str] = ["user_id = %s"]
    params: list[UUID | str | datetime] = [user_id]
    for clause, value in (
        ("status = %s", status),
        ("model_key = %s", model),
        ("created_at >= %s", since),
        ("created_at < %s", until),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    if cursor:
        at, last_id = decode_cursor(cursor)
        where.append("(created_at, id) < (%s, %s)")
        params += [at, last_id]
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT * FROM {SCHEMA}.generations WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT %s",
            [*params, limit + 1],
        )
        rows = await cur.fetchall()
    items = rows[:limit]
    more = len(rows) > limit
    return items, encode_cursor(items[-1]["created_at"], items[-1]["id"]) if more else None


def cached_result(pool: ConnectionPool, fingerprint: str) -> tuple[UUID, dict[str, Any]] | None:
    """The first completed result for ``fingerprint`` made by the model that was asked for (not
    a fallback's, not itself a cache hit), that went through the pipeline and the classifier:
    (its generation id, its result metadata)."""
    with pool.connection() as conn:
        row = conn.execute(
            f"SELECT id, result_metadata FROM {SCHEMA}.generations WHERE fingerprint = %s "
            "AND status = 'completed' AND NOT served_from_cache AND fallback_from IS NULL "
            "AND result_metadata ? 'processed' ORDER BY created_at LIMIT 1",
            [fingerprint],
        ).fetchone()
    return (row[0], row[1]) if row and row[1] else None


def screened_since(pool: ConnectionPool, since: datetime) -> list[UUID]:
    """The ids of the generations made since ``since`` that have a screened image (completed
    or blocked), oldest first."""
    with pool.connection() as conn:
        return [
            row[0]
            for row in conn.execute(
                f"SELECT id FROM {SCHEMA}.generations WHERE created_at >= %s "
                "AND status IN ('completed', 'blocked') ORDER BY created_at",
                [since],
            )
        ]


def overdue(pool: ConnectionPool, now: datetime, limit: int = 100) -> list[UUID]:
    """Unfinished generations past their deadline at ``now``, the longest overdue first (the
    sweep's candidates: each aggregate decides for itself)."""
    with pool.connection() as conn:
        return [
            row[0]
            for row in conn.execute(
                f"SELECT id FROM {SCHEMA}.generations WHERE deadline_at < %s "
                "ORDER BY deadline_at LIMIT %s",
                [now, limit],
            )
        ]


def finished_among(pool: ConnectionPool, ids: list[UUID]) -> list[UUID]:
    """Those of ``ids`` whose generation has finished."""
    if not ids:
        return []
    with pool.connection() as conn:
        return [
            row[0]
            for row in conn.execute(
                f"SELECT id FROM {SCHEMA}.generations WHERE id = ANY(%s) "
                f"AND status IN ({', '.join(repr(s) for s in sorted(TERMINAL))})",
                [ids],
            )
        ]


__all__ = [
    "BadCursor",
    "cached_result",
    "finished_among",
    "generation",
    "overdue",
    "page",
    "screened_since",
]


async def count_overdue(pool: AsyncConnectionPool, now: datetime) -> int:
    """How many unfinished generations are past their deadline (stuck: the sweep ends each
    soon after; a count that stays up means the sweep is not running)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT count(*) FROM {SCHEMA}.generations WHERE deadline_at < %s", [now]
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0
