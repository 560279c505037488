"""Queries over the generations projection's ``feed`` table, for the live feeds (async).

Every read bounds ``created_at`` (the table is partitioned by month): a generation's rows by its
UUIDv7 id's own time, a user's by how far back a feed may resume.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from application.live import LiveMessage
from domain.ids import uuid7_time
from projections.generations import GenerationsView, message_of

FEED = f"{GenerationsView.live_schema()}.feed"


async def _messages(
    pool: AsyncConnectionPool, where: str, params: list[Any], limit: int
) -> list[LiveMessage]:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT * FROM {FEED} WHERE {where} ORDER BY position LIMIT %s", [*params, limit]
        )
        return [message_of(row) for row in await cur.fetchall()]


async def generation_feed(
    pool: AsyncConnectionPool, generation_id: UUID, after: int, limit: int
) -> list[LiveMessage]:
    """One generation's stored messages after position ``after``, oldest first."""
    made = uuid7_time(generation_id) - timedelta(seconds=1)  # nothing happens before its id
    return await _messages(
        pool,
        "generation_id = %s AND created_at >= %s AND position > %s",
        [generation_id, made, after],
        limit,
    )


async def user_feed(
    pool: AsyncConnectionPool, user_id: UUID, after: int, since: datetime, limit: int
) -> list[LiveMessage]:
    """A user's stored messages after position ``after`` made since ``since``, oldest first."""
    return await _messages(
        pool,
        "user_id = %s AND created_at >= %s AND position > %s",
        [user_id, since, after],
        limit,
    )


async def user_head(pool: AsyncConnectionPool, user_id: UUID, since: datetime) -> int:
    """The position of the user's latest stored message since ``since`` (0: none)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT coalesce(max(position), 0) FROM {FEED} "
            "WHERE user_id = %s AND created_at >= %s",
            [user_id, since],
        )
        found = await cur.fetchone()
    return int(found[0]) if found else 0
