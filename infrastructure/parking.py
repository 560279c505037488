"""Durable waiting in PostgreSQL: parked reaction messages, and per-user provider slots.

A worker that meets a :class:`~application.ports.Deferral` parks its message here
(``reactions.parked``) and acknowledges it to the broker: the wait is bounded by the
generation's deadline, not by the broker's retry budget, and survives the loss of every worker
and of Redis. The scheduler (:mod:`infrastructure.scheduler`) sends parked messages again: a
``deferred`` one when it is due, a ``capped`` one when its user has a free slot, oldest first.

Slots (``reactions.provider_slots``) count a user's generations at providers. A user's slots
are taken and counted under a transaction-scoped advisory lock of that user, so two workers
cannot both take the last one; a generation holding one keeps it (a redelivered message finds
it again). Releasing one wakes the scheduler (``NOTIFY``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool

from application.ports import Deferral

#: The channel the scheduler listens on: something was parked or a slot was released.
WAKE_CHANNEL = "pixevo_scheduler"


def user_lock(user_id: UUID) -> int:
    """The advisory lock key of a user's slots (a signed 64-bit slice of the id)."""
    return int.from_bytes(user_id.bytes[8:], "big", signed=True)


@dataclass(frozen=True, slots=True)
class Parked:
    reaction: str
    upstream: str
    notification_id: int
    generation_id: UUID | None
    parked_at: datetime


_PARKED = "reaction, upstream, notification_id, generation_id, parked_at"


class Parking:
    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def park(self, reaction: str, upstream: str, notification_id: int, why: Deferral) -> None:
        """Keeps the message until it is due (or, capped, until its user's turn)."""
        capped = why.delay_s is None and why.user_id is not None
        with self.pool.connection() as conn:
            conn.execute(
                "INSERT INTO reactions.parked (reaction, upstream, notification_id, kind, reason, "
                "generation_id, user_id, not_before) VALUES (%s, %s, %s, %s, %s, %s, %s, "
                "CASE WHEN %s THEN NULL ELSE clock_timestamp() + make_interval(secs => %s) END) "
                "ON CONFLICT (reaction, upstream, notification_id) DO UPDATE SET "
                "kind = excluded.kind, reason = excluded.reason, user_id = excluded.user_id, "
                "not_before = excluded.not_before, parked_at = clock_timestamp()",
                [
                    reaction,
                    upstream,
                    notification_id,
                    "capped" if capped else "deferred",
                    str(why)[:500],
                    why.generation_id,
                    why.user_id,
                    capped,
                    why.delay_s or 0.0,
                ],
            )
            conn.execute("SELECT pg_notify(%s, '')", [WAKE_CHANNEL])

    def due(self, conn: psycopg.Connection[tuple[object, ...]], limit: int) -> list[Parked]:
        """Deferred messages whose time has come, the longest due first."""
        rows = conn.execute(
            f"SELECT {_PARKED} FROM reactions.parked WHERE kind = 'deferred' "
            "AND not_before <= clock_timestamp() ORDER BY not_before LIMIT %s",
            [limit],
        ).fetchall()
        return [Parked(*row) for row in rows]  # type: ignore[arg-type]

    @staticmethod
    def unpark(conn: psycopg.Connection[tuple[object, ...]], parked: Parked) -> None:
        """Forgets a message sent again (unless it was parked anew since it was read)."""
        conn.execute(
            "DELETE FROM reactions.parked WHERE reaction = %s AND upstream = %s "
            "AND notification_id = %s AND parked_at = %s",
            [parked.reaction, parked.upstream, parked.notification_id, parked.parked_at],
        )

    @staticmethod
    def waiting_users(conn: psycopg.Connection[tuple[object, ...]]) -> list[UUID]:
        rows = conn.execute(
            "SELECT DISTINCT user_id FROM reactions.parked WHERE kind = 'capped'"
        ).fetchall()
        return [row[0] for row in rows]  # type: ignore[misc]

    @staticmethod
    def next_in_line(
        conn: psycopg.Connection[tuple[object, ...]], user_id: UUID, limit: int
    ) -> list[Parked]:
        rows = conn.execute(
            f"SELECT {_PARKED} FROM reactions.parked WHERE kind = 'capped' AND user_id = %s "
            "ORDER BY notification_id LIMIT %s",
            [user_id, limit],
        ).fetchall()
        return [Parked(*row) for row in rows]  # type: ignore[arg-type]


class ProviderSlots:
    """The per-user cap (:class:`application.ports.ProviderSlots`) in PostgreSQL."""

    def __init__(self, pool: ConnectionPool, cap: int) -> None:
        self.pool = pool
        self._cap = cap

    @property
    def cap(self) -> int:
        return self._cap

    def take(self, user_id: UUID, generation_id: UUID) -> bool:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [user_lock(user_id)])
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM reactions.provider_slots WHERE generation_id = %s), "
                "(SELECT count(*) FROM reactions.provider_slots WHERE user_id = %s), "
                "EXISTS (SELECT 1 FROM reactions.parked WHERE kind = 'capped' AND user_id = %s)",
                [generation_id, user_id, user_id],
            ).fetchone()
            held, taken, others_wait = row if row else (False, 0, False)
            if held:
                return True
            if taken >= self._cap or others_wait:  # first in, first out
                return False
            self.reserve(conn, user_id, generation_id)
            return True

    @staticmethod
    def reserve(
        conn: psycopg.Connection[tuple[object, ...]], user_id: UUID, generation_id: UUID
    ) -> None:
        """Takes a slot for the generation (the caller holds the user's lock)."""
        conn.execute(
            "INSERT INTO reactions.provider_slots (generation_id, user_id) VALUES (%s, %s) "
            "ON CONFLICT (generation_id) DO NOTHING",
            [generation_id, user_id],
        )

    def free(self, conn: psycopg.Connection[tuple[object, ...]], user_id: UUID) -> int:
        """How many more of the user's generations may go to providers now (lock held)."""
        row = conn.execute(
            "SELECT count(*) FROM reactions.provider_slots WHERE user_id = %s", [user_id]
        ).fetchone()
        taken: int = row[0] if row else 0  # type: ignore[assignment]
        return max(0, self._cap - taken)

    def release(self, generation_id: UUID) -> None:
        """Gives the slot back, and wakes the scheduler only when the user has generations
        waiting for one (one round trip; most releases wake nobody)."""
        with self.pool.connection() as conn:
            conn.execute(
                "WITH freed AS (DELETE FROM reactions.provider_slots WHERE generation_id = %s "
                "RETURNING user_id) SELECT pg_notify(%s, '') FROM freed WHERE EXISTS "
                "(SELECT 1 FROM reactions.parked p WHERE p.kind = 'capped' "
                "AND p.user_id = freed.user_id)",
                [generation_id, WAKE_CHANNEL],
            )

    def held(self) -> list[UUID]:
        """The generations holding a slot."""
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT generation_id FROM reactions.provider_slots").fetchall()
        return [row[0] for row in rows]
