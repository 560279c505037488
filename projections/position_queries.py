"""Where an application's notification log ends, and how far a projection has followed it.

Together they give read-your-own-writes on the read side: note the log's head after a write
(or when a read finds nothing), then :func:`wait_until_projected` before reading again.

An application's log is its events table, ``<name>.<name>_events`` (each bounded context has
a schema of its own, named after it); a projection's position is the notification id in its
tracking table, ``proj_<projection>.<projection>_tracking``, for its upstream application.
"""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from psycopg.sql import SQL, Identifier
from psycopg_pool import AsyncConnectionPool

from projections.base import ProjectionView

#: How long :func:`wait_until_projected` waits, and how often it looks, by default.
WAIT_S = 2.0
POLL_S = 0.03


async def log_head(pool: AsyncConnectionPool, application: str) -> int:
    """The id of the last notification in ``application``'s log (0: none yet)."""
    statement = SQL("SELECT max(notification_id) FROM {}.{}").format(
        Identifier(application), Identifier(f"{application}_events")
    )
    async with pool.connection() as conn:
        cur = await conn.execute(statement)
        row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


async def projected_to(pool: AsyncConnectionPool, view: type[ProjectionView]) -> int:
    """The position ``view`` has processed its upstream log to, in its live tables."""
    statement = SQL("SELECT max(notification_id) FROM {}.{} WHERE application_name = %s").format(
        Identifier(view.live_schema()), Identifier(f"{view.projection_name}_tracking")
    )
    async with pool.connection() as conn:
        cur = await conn.execute(statement, [view.upstream])
        row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


async def wait_until_projected(
    pool: AsyncConnectionPool,
    view: type[ProjectionView],
    position: int,
    *,
    timeout_s: float = WAIT_S,
    poll_s: float = POLL_S,
) -> bool:
    """Waits until ``view`` has processed its upstream log up to ``position``.

    ``False`` when it has not within ``timeout_s`` (the projection lags, or is not running).
    """
    deadline = time.monotonic() + timeout_s
    while await projected_to(pool, view) < position:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(poll_s, left))
    return True


async def wait_for_head(
    pool: AsyncConnectionPool,
    view: type[ProjectionView],
    *,
    timeout_s: float = WAIT_S,
    poll_s: float = POLL_S,
) -> bool:
    """Waits until ``view`` has processed everything its upstream log holds now."""
    head = await log_head(pool, view.upstream)
    return await wait_until_projected(pool, view, head, timeout_s=timeout_s, poll_s=poll_s)


async def wait_for_aggregate(
    pool: AsyncConnectionPool,
    view: type[ProjectionView],
    originator_id: UUID,
    *,
    timeout_s: float = WAIT_S,
    poll_s: float = POLL_S,
) -> bool:
    """Waits until ``view`` has processed every event one aggregate has in its upstream log
    (read-your-writes for one user's rows). One round trip when it has: the usual case."""
    application = view.upstream
    statement = SQL(
        "SELECT (SELECT notification_id FROM {}.{} WHERE originator_id = %s"
        " ORDER BY originator_version DESC LIMIT 1),"
        " (SELECT max(notification_id) FROM {}.{} WHERE application_name = %s)"
    ).format(
        Identifier(application),
        Identifier(f"{application}_events"),
        Identifier(view.live_schema()),
        Identifier(f"{view.projection_name}_tracking"),
    )
    async with pool.connection() as conn:
        cur = await conn.execute(statement, [originator_id, application])
        row = await cur.fetchone()
    head, projected = row if row else (None, None)
    if head is None or (projected is not None and projected >= head):
        return True
    return await wait_until_projected(pool, view, int(head), timeout_s=timeout_s, poll_s=poll_s)
