"""Queries over the marketplace and earnings projections' tables: the API's (async) and the
command line's (sync). Read-only.

Browsing pages with keyset cursors on the sort's key and the id (a page never repeats or skips
a listing that keeps its key); a text search ranked by relevance pages the same way on its rank,
which is a ``real`` and so comes back from the cursor exactly as it was computed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from application.errors import InvalidRequest
from projections import position_queries
from projections.earnings import EarningsView
from projections.ledger_queries import BadCursor
from projections.ledger_queries import decode_cursor as decode_time_cursor
from projections.ledger_queries import encode_cursor as encode_time_cursor
from projections.marketplace import MarketplaceView

SCHEMA = MarketplaceView.live_schema()
EARNINGS = EarningsView.live_schema()
ZERO = Decimal("0.0000")

LISTING_FIELDS = (
    "id, workflow_id, version, title, description, price AS price_credits, creator_id, status, "
    "installs, created_at, updated_at"
)


RANK = "ts_rank(search, websearch_to_tsquery('english', %(q)s))"


@dataclass(frozen=True, slots=True)
class Order:
    """A browsing order: what it sorts on (then the id), its type, and which way."""

    column: str
    field: str
    cast: str
    descending: bool

    def parse(self, value: str) -> Any:
        parsers: dict[str, Any] = {
            "timestamptz": datetime.fromisoformat,
            "int": int,
            "numeric": Decimal,
            "real": float,
        }
        return parsers[self.cast](value)


#: The sorts a browse may ask for; a search without one is ranked by relevance.
ORDERS = {
    "newest": Order("created_at", "created_at", "timestamptz", descending=True),
    "installs": Order("installs", "installs", "int", descending=True),
    "price": Order("price", "price_credits", "numeric", descending=False),
    "rank": Order(RANK, "rank", "real", descending=True),
}
SORTS = ("newest", "installs", "price")


def encode_cursor(sort: str, key: Any, listing_id: UUID) -> str:
    payload = json.dumps([sort, str(key), str(listing_id)])
    return base64.urlsafe_b64encode(payload.encode()).decode()


def decode_cursor(cursor: str, sort: str) -> tuple[Any, UUID]:
    """The cursor's (key, id), typed for the sort; a forged or another sort's cursor is bad."""
    try:
        kind, key, listing_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if kind != sort:
            raise ValueError(kind)
        return ORDERS[sort].parse(key), UUID(listing_id)
    except (ValueError, UnicodeError, TypeError, ArithmeticError) as error:
        raise BadCursor("the cursor is not one this API issued for this sort") from error


def _sort_of(q: str | None, sort: str | None) -> str:
    if sort is None:
        return "rank" if q else "newest"
    if sort not in SORTS:
        raise InvalidRequest("sort", f"one of {', '.join(SORTS)}")
    return sort


async def listings(
    pool: AsyncConnectionPool, q: str | None, sort: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Listed listings, one page: matching ``q`` (web search syntax, English stemming) if
    given, in the order ``sort`` names (by relevance for a search that names none)."""
    q = q.strip() if q and q.strip() else None
    name = _sort_of(q, sort)
    order = ORDERS[name]
    params: dict[str, Any] = {"q": q, "limit": limit + 1}
    where = ["status = 'listed'"]
    if q:
        where.append("search @@ websearch_to_tsquery('english', %(q)s)")
    if cursor:
        params["key"], params["id"] = decode_cursor(cursor, name)
        sign = "<" if order.descending else ">"
        where.append(f"({order.column}, id) {sign} (%(key)s::{order.cast}, %(id)s::uuid)")
    direction = "DESC" if order.descending else "ASC"
    rank = RANK if q else "NULL::real"
    statement = (
        f"SELECT {LISTING_FIELDS}, {rank} AS rank FROM {SCHEMA}.listings "
        f"WHERE {' AND '.join(where)} "
        f"ORDER BY {order.column} {direction}, id {direction} LIMIT %(limit)s"
    )
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(statement, params)
        rows = await cur.fetchall()
    page = [dict(row) for row in rows[:limit]]
    last = page[-1] if page else None
    next_cursor = (
        encode_cursor(name, last[order.field], last["id"])
        if last is not None and len(rows) > limit
        else None
    )
    for row in page:
        del row["rank"]
    return page, next_cursor


async def listing(pool: AsyncConnectionPool, listing_id: UUID) -> dict[str, Any] | None:
    """A listing, listed or unlisted (``None``: no such listing, or not projected yet)."""
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT {LISTING_FIELDS} FROM {SCHEMA}.listings WHERE id = %s", [listing_id]
        )
        row = await cur.fetchone()
    return dict(row) if row else None


async def caught_up_listing(pool: AsyncConnectionPool, listing_id: UUID) -> None:
    """Read-your-writes on one listing: waits (bounded: a stalled projection answers stale)
    until the read model has every event of the listing, e.g. one just created."""
    await position_queries.wait_for_aggregate(pool, MarketplaceView, listing_id)


async def installs(
    pool: AsyncConnectionPool, buyer_id: UUID, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The buyer's installs, newest first (a keyset cursor on (created_at, install_id)), each
    with the version its listing offers now and whether that is an update for it."""
    params: dict[str, Any] = {"buyer": buyer_id, "limit": limit + 1}
    after = ""
    if cursor:
        params["at"], params["id"] = decode_time_cursor(cursor)
        after = "AND (i.created_at, i.install_id) < (%(at)s, %(id)s)"
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT i.install_id, i.listing_id, i.workflow_id, i.version, "
            "i.price AS price_credits, i.status, i.created_at, "
            "coalesce(l.version, i.version) AS offered_version, "
            "coalesce(l.version > i.version AND i.status = 'installed', false) "
            "AS update_available "
            f"FROM {SCHEMA}.installs i LEFT JOIN {SCHEMA}.listings l ON l.id = i.listing_id "
            f"WHERE i.buyer_id = %(buyer)s {after} "
            "ORDER BY i.created_at DESC, i.install_id DESC LIMIT %(limit)s",
            params,
        )
        rows = await cur.fetchall()
    page = [dict(row) for row in rows[:limit]]
    next_cursor = (
        encode_time_cursor(page[-1]["created_at"], page[-1]["install_id"])
        if len(rows) > limit
        else None
    )
    return page, next_cursor


# -- earnings ----------------------------------------------------------------------------------


async def earnings(
    pool: AsyncConnectionPool, user_id: UUID, limit: int, cursor: str | None
) -> dict[str, Any]:
    """What the user earned from sales: the totals, and a page of movements newest first
    (zeros and no items for a user who never earned)."""
    params: dict[str, Any] = {"user": user_id, "limit": limit + 1}
    after = ""
    if cursor:
        params["at"], params["id"] = decode_time_cursor(cursor)
        after = "AND (created_at, id) < (%(at)s, %(id)s)"
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT total, earned, clawed_back, owed, installs, refunds FROM {EARNINGS}.earnings "
            "WHERE user_id = %(user)s",
            params,
        )
        totals = await cur.fetchone()
        items: list[Any] = []
        if totals is not None:
            await cur.execute(
                "SELECT id, cause_id, kind, amount, note, created_at AS at "
                f"FROM {EARNINGS}.earning_items WHERE user_id = %(user)s {after} "
                "ORDER BY created_at DESC, id DESC LIMIT %(limit)s",
                params,
            )
            items = await cur.fetchall()
    page = [dict(item) for item in items[:limit]]
    next_cursor = encode_time_cursor(page[-1]["at"], page[-1]["id"]) if len(items) > limit else None
    for item in page:
        del item["id"]
    found = totals or {}
    return {
        "total_credits": found.get("total", ZERO),
        "earned": found.get("earned", ZERO),
        "clawed_back": found.get("clawed_back", ZERO),
        "owed": found.get("owed", ZERO),
        "installs": found.get("installs", 0),
        "refunds": found.get("refunds", 0),
        "items": page,
        "next_cursor": next_cursor,
    }


@dataclass(frozen=True, slots=True)
class ProjectedEarnings:
    """One row of ``earnings``: an account's earnings as the projection has it."""

    user_id: UUID
    earned: Decimal
    clawed_back: Decimal
    owed: Decimal
    installs: int
    refunds: int
    #: The version of the account aggregate the row reflects.
    version: int


def earning_accounts(pool: ConnectionPool) -> list[ProjectedEarnings]:
    """Every row of ``earnings`` (for the audit)."""
    with pool.connection() as conn:
        rows = conn.execute(
            "SELECT user_id, earned, clawed_back, owed, installs, refunds, version "
            f"FROM {EARNINGS}.earnings ORDER BY user_id"
        ).fetchall()
    return [ProjectedEarnings(*row) for row in rows]
