"""Queries over the workflows projection: the API's (async) and the sweeper's (sync). Read-only.

Every answer is the API's JSON, rendered by :mod:`application.workflow_views`; another user's
workflow or run is ``None``, as one that does not exist.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from application.workflow_views import template_document, version_document
from domain.ids import uuid7_time
from domain.workflow import RUN_TERMINAL
from projections.feed_queries import StoredFeed
from projections.ledger_queries import BadCursor, decode_cursor, encode_cursor
from projections.workflows import WorkflowsView

SCHEMA = WorkflowsView.live_schema()
#: A run's row is written a moment after its UUIDv7 id is made.
_ID_TO_ROW = timedelta(minutes=5)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_TERMINAL = ", ".join(f"'{s}'" for s in sorted(RUN_TERMINAL))


def _by_id(run_id: UUID) -> tuple[str, list[Any]]:
    """The clause finding one run: bounded by its UUIDv7 id's own time (one partition)."""
    if run_id.version != 7:
        return "id = %s", [run_id]
    made = uuid7_time(run_id)
    return "id = %s AND created_at >= %s AND created_at < %s", [
        run_id,
        made - timedelta(seconds=1),
        made + _ID_TO_ROW,
    ]


async def run_row(pool: AsyncConnectionPool, user_id: UUID, run_id: UUID) -> dict[str, Any] | None:
    """The run's row (``doc``, ``status``, ``position``, ...) if it is ``user_id``'s."""
    where, params = _by_id(run_id)
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT id, user_id, status, doc, position FROM {SCHEMA}.workflow_runs "
            f"WHERE {where} AND user_id = %s",
            [*params, user_id],
        )
        return await cur.fetchone()


async def run(pool: AsyncConnectionPool, user_id: UUID, run_id: UUID) -> dict[str, Any] | None:
    """The run's document, as ``GET /v1/workflow-runs/{id}`` answers it."""
    row = await run_row(pool, user_id, run_id)
    return dict(row["doc"]) if row else None


async def runs(
    pool: AsyncConnectionPool, user_id: UUID, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The user's runs, newest first; a keyset cursor on (created_at, id)."""
    return await _page(pool, "workflow_runs", "user_id", user_id, limit, cursor, "doc")


async def workflows(
    pool: AsyncConnectionPool, user_id: UUID, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The user's workflows, newest first."""
    rows, next_cursor = await _page(pool, "workflow_templates", "owner_id", user_id, limit, cursor)
    return [_template(row) for row in rows], next_cursor


async def workflow(
    pool: AsyncConnectionPool, user_id: UUID, workflow_id: UUID
) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT * FROM {SCHEMA}.workflow_templates WHERE id = %s AND owner_id = %s",
            [workflow_id, user_id],
        )
        row = await cur.fetchone()
    return _template(row) if row else None


async def version(
    pool: AsyncConnectionPool, user_id: UUID, workflow_id: UUID, number: int
) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT v.* FROM {SCHEMA}.workflow_versions v JOIN {SCHEMA}.workflow_templates t "
            "ON t.id = v.workflow_id WHERE v.workflow_id = %s AND v.version = %s "
            "AND t.owner_id = %s",
            [workflow_id, number, user_id],
        )
        row = await cur.fetchone()
    if row is None:
        return None
    return version_document(workflow_id, number, row)


async def _page(
    pool: AsyncConnectionPool,
    table: str,
    owner: str,
    user_id: UUID,
    limit: int,
    cursor: str | None,
    column: str = "*",
) -> tuple[list[dict[str, Any]], str | None]:
    params: list[Any] = [user_id]
    after = ""
    if cursor:
        at, last_id = decode_cursor(cursor)
        after = "AND (created_at, id) < (%s, %s)"
        params += [at, last_id]
    columns = "*" if column == "*" else f"id, created_at, {column}"
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT {columns} FROM {SCHEMA}.{table} WHERE {owner} = %s {after} "
            "ORDER BY created_at DESC, id DESC LIMIT %s",
            [*params, limit + 1],
        )
        rows = await cur.fetchall()
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
    if column != "*":
        return [dict(row[column]) for row in page], next_cursor
    return page, next_cursor


def _template(row: dict[str, Any]) -> dict[str, Any]:
    return template_document(SimpleNamespace(**row, created_on=row["created_at"]))


# -- the runs' live feed ----------------------------------------------------------------------

RUNS = StoredFeed(f"{SCHEMA}.feed", "run_id")


# -- the sweeper's ------------------------------------------------------------------------------


def overdue_runs(pool: ConnectionPool, now: datetime, limit: int = 100) -> list[UUID]:
    """Unfinished runs with a queued or running node past its deadline at ``now``, the longest
    overdue first (candidates: each run's aggregate decides for itself)."""
    with pool.connection() as conn:
        return [
            row[0]
            for row in conn.execute(
                f"SELECT id FROM {SCHEMA}.workflow_runs WHERE deadline < %s "
                f"AND deadline IS NOT NULL AND status NOT IN ({_TERMINAL}) "
                "ORDER BY deadline LIMIT %s",
                [now, limit],
            )
        ]


__all__ = [
    "RUNS",
    "BadCursor",
    "overdue_runs",
    "run",
    "run_row",
    "runs",
    "version",
    "workflow",
    "workflows",
]
