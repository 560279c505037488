"""Queries over the ledger projection's tables: the API's (async) and the command line's (sync).
Read-only."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from application.errors import Invalid
from domain.credits import account_id_for
from projections import position_queries
from projections.ledger import LedgerView

SCHEMA = LedgerView.live_schema()


class BadCursor(Invalid, ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Balance:
    balance: Decimal
    held: Decimal
    available: Decimal
    holds: list[dict[str, Any]]
    #: What clawbacks could not take yet (settled from the next earnings).
    owed: Decimal = Decimal("0.0000")


async def balance(pool: AsyncConnectionPool, user_id: UUID) -> Balance:
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT balance, held, available, owed FROM {SCHEMA}.credit_balances "
            "WHERE user_id = %s",
            [user_id],
        )
        row = await cur.fetchone()
        if row is None:
            return Balance(Decimal("0.0000"), Decimal("0.0000"), Decimal("0.0000"), [])
        await cur.execute(
            f"SELECT hold_id AS id, amount, cause_type, cause_id, created_at "
            f"FROM {SCHEMA}.credit_holds WHERE user_id = %s ORDER BY created_at, hold_id",
            [user_id],
        )
        holds = await cur.fetchall()
    return Balance(row["balance"], row["held"], row["available"], list(holds), row["owed"])


async def caught_up(pool: AsyncConnectionPool, user_id: UUID) -> None:
    """Read-your-writes on one account: waits (bounded: a stalled projection answers stale)
    until the read model has every event of the user's account, e.g. a grant just answered."""
    await position_queries.wait_for_aggregate(pool, LedgerView, account_id_for(user_id))


async def available(pool: AsyncConnectionPool, user_id: UUID) -> Decimal:
    """What the user can spend now (the fast pre-check's one-row read)."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT available FROM {SCHEMA}.credit_balances WHERE user_id = %s", [user_id]
        )
        row = await cur.fetchone()
    return row[0] if row else Decimal(0)


@dataclass(frozen=True, slots=True)
class ProjectedAccount:
    """One row of ``credit_balances``: an account as the projection has it."""

    user_id: UUID
    balance: Decimal
    held: Decimal
    available: Decimal
    #: The version of the account aggregate the row reflects.
    version: int
    owed: Decimal = Decimal(0)


def accounts(pool: ConnectionPool) -> list[ProjectedAccount]:
    """Every account in ``credit_balances`` (for the billing audit)."""
    with pool.connection() as conn:
        rows = conn.execute(
            f"SELECT user_id, balance, held, available, version, owed FROM {SCHEMA}.credit_balances"
        ).fetchall()
    return [ProjectedAccount(*row) for row in rows]


def encode_cursor(at: datetime, entry_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{entry_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        at, _, entry_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), UUID(entry_id)
    except (ValueError, UnicodeError) as error:
        raise BadCursor("the cursor is not one this API issued") from error


async def ledger_page(
    pool: AsyncConnectionPool, user_id: UUID, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; a keyset cursor on (created_at, id)."""
    params: list[Any] = [user_id]
    after = ""
    if cursor:
        at, entry_id = decode_cursor(cursor)
        after = "AND (created_at, id) < (%s, %s)"
        params += [at, entry_id]
    params.append(limit + 1)
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT id, created_at, kind, amount, balance_after, available_after, cause_type, "
            f"cause_id, note FROM {SCHEMA}.ledger_entries WHERE user_id = %s {after} "
            f"ORDER BY created_at DESC, id DESC LIMIT %s",
            params,
        )
        rows = await cur.fetchall()
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return page, next_cursor
