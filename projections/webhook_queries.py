"""SQL over the webhooks outbox (``proj_webhooks``): the API's reads and redeliveries, the
sender's claims and records, and the failing-endpoints gauge."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import Connection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from projections.ledger_queries import BadCursor
from projections.ledger_queries import decode_cursor as decode_time_cursor
from projections.ledger_queries import encode_cursor as encode_time_cursor
from projections.webhooks import CHANNEL, OWNER_LOCK_CLASS, SCHEMA, lock_owners

OPEN = ("pending", "failing")

# -- the API -----------------------------------------------------------------------------------


async def endpoints(
    pool: AsyncConnectionPool, owner_id: UUID, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The owner's endpoints (not deleted), newest first; a keyset cursor on (created_at, id)."""
    params: dict[str, Any] = {"owner": owner_id, "limit": limit + 1}
    after = ""
    if cursor:
        params["at"], params["id"] = decode_time_cursor(cursor)
        after = "AND (created_at, id) < (%(at)s, %(id)s)"
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT id, url, events, status, disabled_reason, disabled_at, created_at "
            f"FROM {SCHEMA}.endpoints WHERE owner_id = %(owner)s AND status <> 'deleted' {after} "
            "ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
            params,
        )
        rows = await cur.fetchall()
    page = [dict(r) for r in rows[:limit]]
    next_cursor = (
        encode_time_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return page, next_cursor


def _encode_sequence(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"dlv|{sequence}".encode()).decode()


def _decode_sequence(cursor: str) -> int:
    try:
        kind, _, number = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        if kind != "dlv":
            raise ValueError(kind)
        return int(number)
    except (ValueError, UnicodeError) as error:
        raise BadCursor("the cursor is not one this API issued") from error


async def deliveries(
    pool: AsyncConnectionPool, endpoint_id: UUID, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """An endpoint's deliveries (redeliveries included), newest first."""
    params: dict[str, Any] = {"endpoint": endpoint_id, "limit": limit + 1}
    after = ""
    if cursor:
        params["before"] = _decode_sequence(cursor)
        after = "AND sequence < %(before)s"
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT sequence, message_id, event_type, occurred_at, redelivery, status, attempts, "
            "last_status_code, last_error, last_attempt_at, next_attempt_at "
            f"FROM {SCHEMA}.deliveries WHERE endpoint_id = %(endpoint)s {after} "
            "ORDER BY sequence DESC LIMIT %(limit)s",
            params,
        )
        rows = await cur.fetchall()
    page = [dict(r) for r in rows[:limit]]
    next_cursor = _encode_sequence(page[-1]["sequence"]) if len(rows) > limit else None
    return page, next_cursor


async def redeliver(
    pool: AsyncConnectionPool,
    owner_id: UUID,
    endpoint_id: UUID,
    since: datetime,
    until: datetime | None,
) -> int:
    """Queues again, behind what is pending and in the events' order, every message of the
    log the endpoint subscribes to (since its registration) of events in ``[since, until)``;
    they keep their message ids. Returns how many."""
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor()
        await cur.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s::text))",
            [OWNER_LOCK_CLASS, owner_id],
        )
        await cur.execute(
            f"INSERT INTO {SCHEMA}.deliveries "
            "(endpoint_id, message_id, event_type, occurred_at, redelivery) "
            "SELECT e.id, v.message_id, v.event_type, v.occurred_at, true "
            f"FROM {SCHEMA}.endpoints e JOIN {SCHEMA}.events v ON v.owner_id = e.owner_id "
            "AND v.event_type = ANY(e.events) AND v.occurred_at >= e.created_at "
            "WHERE e.id = %(endpoint)s AND v.occurred_at >= %(since)s "
            "AND (%(until)s::timestamptz IS NULL OR v.occurred_at < %(until)s) "
            "ORDER BY v.occurred_at, v.message_id",
            {"endpoint": endpoint_id, "since": since, "until": until},
        )
        queued = cur.rowcount
        if queued:
            await cur.execute("SELECT pg_notify(%s, '')", [CHANNEL])
    return queued


# -- the gauge ---------------------------------------------------------------------------------


#: Active endpoints whose oldest undelivered message has failed at least once.
_FAILING = (
    f"SELECT count(*) FROM {SCHEMA}.endpoints e CROSS JOIN LATERAL ("
    f"SELECT d.status FROM {SCHEMA}.deliveries d WHERE d.endpoint_id = e.id "
    "AND d.status IN ('pending', 'failing') ORDER BY d.sequence LIMIT 1) h "
    "WHERE e.status = 'active' AND h.status = 'failing'"
)


def failing_endpoints(pool: ConnectionPool | Connection[Any]) -> int:
    """Active endpoints whose oldest undelivered message has failed at least once."""
    if isinstance(pool, ConnectionPool):
        with pool.connection() as conn:
            row = conn.execute(_FAILING).fetchone()
    else:
        row = pool.execute(_FAILING).fetchone()
    return int(row[0]) if row else 0


async def count_failing_endpoints(pool: AsyncConnectionPool) -> int:
    """:func:`failing_endpoints`, for the API (``/metrics``)."""
    async with pool.connection() as conn:
        cur = await conn.execute(_FAILING)
        row = await cur.fetchone()
    return int(row[0]) if row else 0


# -- the sender --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    """The oldest undelivered message of an endpoint, with what sending it needs."""

    endpoint_id: UUID
    owner_id: UUID
    url: str
    secret: str
    failing_since: datetime | None
    sequence: int
    message_id: str
    event_type: str
    occurred_at: datetime
    attempts: int
    payload: Any


def claim(conn: Connection[Any], now: datetime) -> UUID | None:
    """Locks (until the transaction ends) an active endpoint whose oldest undelivered message
    is due, that no other sender holds; ``None`` if there is none."""
    row = conn.execute(
        f"SELECT e.id FROM {SCHEMA}.endpoints e CROSS JOIN LATERAL ("
        f"SELECT d.next_attempt_at FROM {SCHEMA}.deliveries d WHERE d.endpoint_id = e.id "
        "AND d.status IN ('pending', 'failing') ORDER BY d.sequence LIMIT 1) h "
        "WHERE e.status = 'active' AND h.next_attempt_at <= %s "
        "ORDER BY h.next_attempt_at LIMIT 1 FOR UPDATE OF e SKIP LOCKED",
        [now],
    ).fetchone()
    return row[0] if row else None


def head(conn: Connection[Any], endpoint_id: UUID, now: datetime) -> Head | None:
    """The claimed endpoint's oldest undelivered message, read after the lock (so what another
    sender just recorded is seen), if it is active and the message is due."""
    cur = conn.cursor(row_factory=dict_row)
    cur.execute(
        "SELECT e.id AS endpoint_id, e.owner_id, e.url, e.secret, e.failing_since, "
        "d.sequence, d.message_id, d.event_type, d.occurred_at, d.attempts, d.next_attempt_at, "
        "v.payload "
        f"FROM {SCHEMA}.endpoints e JOIN {SCHEMA}.deliveries d ON d.endpoint_id = e.id "
        f"JOIN {SCHEMA}.events v ON v.message_id = d.message_id "
        "WHERE e.id = %s AND e.status = 'active' AND d.status IN ('pending', 'failing') "
        "ORDER BY d.sequence LIMIT 1",
        [endpoint_id],
    )
    row = cur.fetchone()
    if row is None or row["next_attempt_at"] > now:
        return None
    row.pop("next_attempt_at")
    return Head(**row)


def record_success(
    conn: Connection[Any], sequence: int, endpoint_id: UUID, status_code: int, at: datetime
) -> None:
    conn.execute(
        f"UPDATE {SCHEMA}.deliveries SET status = 'delivered', attempts = attempts + 1, "
        "last_status_code = %s, last_error = NULL, last_attempt_at = %s WHERE sequence = %s",
        [status_code, at, sequence],
    )
    conn.execute(
        f"UPDATE {SCHEMA}.endpoints SET failing_since = NULL, last_success_at = %s WHERE id = %s",
        [at, endpoint_id],
    )


def record_failure(
    conn: Connection[Any],
    sequence: int,
    endpoint_id: UUID,
    status_code: int | None,
    error: str | None,
    at: datetime,
    next_attempt_at: datetime | None,
) -> None:
    """A failed attempt: ``next_attempt_at`` ``None`` means the schedule is spent (``failed``:
    the next message goes)."""
    conn.execute(
        f"UPDATE {SCHEMA}.deliveries SET status = %s, attempts = attempts + 1, "
        "last_status_code = %s, last_error = %s, last_attempt_at = %s, "
        "next_attempt_at = coalesce(%s, next_attempt_at) WHERE sequence = %s",
        [
            "failing" if next_attempt_at else "failed",
            status_code,
            error,
            at,
            next_attempt_at,
            sequence,
        ],
    )
    conn.execute(
        f"UPDATE {SCHEMA}.endpoints SET failing_since = coalesce(failing_since, %s) WHERE id = %s",
        [at, endpoint_id],
    )


def mark_disabled(conn: Connection[Any], endpoint_id: UUID, reason: str, at: datetime) -> None:
    """Stops sends at once (the write side's ``Disabled`` event, projected, agrees)."""
    conn.execute(
        f"UPDATE {SCHEMA}.endpoints SET status = 'disabled', disabled_reason = %s, "
        "disabled_at = %s WHERE id = %s AND status = 'active'",
        [reason, at, endpoint_id],
    )


__all__ = [
    "Head",
    "claim",
    "deliveries",
    "endpoints",
    "failing_endpoints",
    "head",
    "lock_owners",
    "mark_disabled",
    "record_failure",
    "record_success",
    "redeliver",
]
