"""Queries over a projection's ``feed`` table, for the live feeds (async).

Every read bounds ``created_at`` (the tables are partitioned by month): a subject's rows (a
generation's, a run's) by its UUIDv7 id's own time, a user's by how far back a feed may resume.
The generations' feed and the workflow runs' feed are two :class:`StoredFeed` of one shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from application.live import LiveMessage
from domain.ids import uuid7_time
from projections.feed import message_of
from projections.generations import GenerationsView

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class StoredFeed:
    """One projection's feed table (``schema.feed``) and the column naming each row's subject."""

    table: str
    subject: str

    async def _messages(
        self, pool: AsyncConnectionPool, where: str, params: list[Any], limit: int
    ) -> list[LiveMessage]:
        async with pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT * FROM {self.table} WHERE {where} ORDER BY position LIMIT %s",
                [*params, limit],
            )
            return [message_of(row, self.subject) for row in await cur.fetchall()]

    async def of_subject(
        self, pool: AsyncConnectionPool, subject_id: UUID, after: int, limit: int
    ) -> list[LiveMessage]:
        """One subject's stored messages after position ``after``, oldest first."""
        # nothing happens before a time-ordered id was made
        made = uuid7_time(subject_id) - timedelta(seconds=1) if subject_id.version == 7 else _EPOCH
        return await self._messages(
            pool,
            f"{self.subject} = %s AND created_at >= %s AND position > %s",
            [subject_id, made, after],
            limit,
        )

    async def of_user(
        self, pool: AsyncConnectionPool, user_id: UUID, after: int, since: datetime, limit: int
    ) -> list[LiveMessage]:
        """A user's stored messages after position ``after`` made since ``since``, oldest first."""
        return await self._messages(
            pool,
            "user_id = %s AND created_at >= %s AND position > %s",
            [user_id, since, after],
            limit,
        )

    async def user_head(self, pool: AsyncConnectionPool, user_id: UUID, since: datetime) -> int:
        """The position of the user's latest stored message since ``since`` (0: none)."""
        async with pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT coalesce(max(position), 0) FROM {self.table} "
                "WHERE user_id = %s AND created_at >= %s",
                [user_id, since],
            )
            found = await cur.fetchone()
        return int(found[0]) if found else 0


GENERATIONS = StoredFeed(f"{GenerationsView.live_schema()}.feed", "generation_id")
