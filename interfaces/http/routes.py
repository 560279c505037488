"""The v1 routes: thin controllers that decode, call one use case or query, and encode."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID, uuid4, uuid5

import redis.asyncio as aioredis
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, Parameter
from litestar.types import ControllerRouterHandler
from psycopg_pool import AsyncConnectionPool

from application.billing import BillingApplication
from application.users import User, Users
from domain.credits import Cause, format_credits, positive_units
from domain.ledger import LedgerEntry as DomainEntry
from infrastructure.tokens import StreamTokens
from interfaces.http import dto
from interfaces.http.auth import admin_only
from interfaces.http.problems import ProblemError
from projections import ledger_queries

_IDEMPOTENCY_NS = UUID("8d6e7b0a-3c2f-4e59-a1d4-6b7c8d9e0f12")
IdempotencyKey = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", max_length=200, required=False)
]


def _credits(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.0001")))


def _entry(entry: DomainEntry) -> dto.LedgerEntry:
    return dto.LedgerEntry(
        id=entry.id,
        at=entry.at,
        kind=entry.kind,
        amount=format_credits(entry.amount),
        balance_after=format_credits(entry.balance_after),
        available_after=format_credits(entry.available_after),
        cause=dto.Cause(entry.cause.type, entry.cause.id),
        note=entry.note,
    )


class Health(Controller):
    path = ""

    @get("/health", exclude_from_auth=True)
    async def health(self) -> dto.Health:
        return dto.Health(status="ok")

    @get("/ready", exclude_from_auth=True)
    async def ready(
        self, pool: NamedDependency[AsyncConnectionPool], redis: NamedDependency[aioredis.Redis]
    ) -> Response[dto.Health]:
        checks = {"postgres": "ok", "redis": "ok"}
        try:
            async with asyncio.timeout(2):
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
        except Exception as error:  # noqa: BLE001 - any failure means "not ready"
            checks["postgres"] = f"unavailable: {type(error).__name__}"
        try:
            async with asyncio.timeout(2):
                await redis.ping()
        except Exception as error:  # noqa: BLE001
            checks["redis"] = f"unavailable: {type(error).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return Response(
            dto.Health(status="ok" if ok else "unavailable", checks=checks),
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": "5"},
        )


class Me(Controller):
    path = "/v1/me"

    @get("")
    async def me(self, request: Request[User, Any, Any]) -> dto.Me:
        user = request.user
        return dto.Me(user_id=user.id, email=user.email, admin=user.admin)


class Credits(Controller):
    path = "/v1/credits"

    @get("")
    async def balance(
        self, request: Request[User, Any, Any], pool: NamedDependency[AsyncConnectionPool]
    ) -> dto.CreditsView:
        await ledger_queries.caught_up(pool, request.user.id)
        found = await ledger_queries.balance(pool, request.user.id)
        return dto.CreditsView(
            balance=_credits(found.balance),
            available=_credits(found.available),
            held=_credits(found.held),
            owed=_credits(found.owed),
            holds=[
                dto.Hold(
                    id=h["id"],
                    amount=_credits(h["amount"]),
                    cause=dto.Cause(h["cause_type"], h["cause_id"]),
                    created_at=h["created_at"],
                )
                for h in found.holds
            ],
        )

    @get("/ledger")
    async def ledger(
        self,
        request: Request[User, Any, Any],
        pool: NamedDependency[AsyncConnectionPool],
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Parameter(max_length=200)] = None,
    ) -> dto.LedgerPage:
        await ledger_queries.caught_up(pool, request.user.id)
        try:
            rows, next_cursor = await ledger_queries.ledger_page(
                pool, request.user.id, limit, cursor
            )
        except ledger_queries.BadCursor as bad:
            raise ProblemError(400, str(bad)) from None
        return dto.LedgerPage(
            items=[
                dto.LedgerEntry(
                    id=r["id"],
                    at=r["created_at"],
                    kind=r["kind"],
                    amount=_credits(r["amount"]),
                    balance_after=_credits(r["balance_after"]),
                    available_after=_credits(r["available_after"]),
                    cause=dto.Cause(r["cause_type"], r["cause_id"]),
                    note=r["note"],
                )
                for r in rows
            ],
            next_cursor=next_cursor,
        )


class Admin(Controller):
    path = "/v1/admin"
    guards = [admin_only]

    @post("/users", status_code=201, sync_to_thread=True)
    def create_user(
        self, data: JSONBody[dto.CreateUser], users: NamedDependency[Users]
    ) -> dto.CreatedUser:
        created = users.create(data.email, str(data.credits), admin=data.admin)
        return dto.CreatedUser(user_id=created.user_id, api_key=created.api_key)

    @post("/credits/grants", status_code=201, sync_to_thread=True)
    def grant(
        self,
        data: JSONBody[dto.Grant],
        users: NamedDependency[Users],
        billing: NamedDependency[BillingApplication],
        idempotency_key: IdempotencyKey = None,
    ) -> dto.LedgerEntry:
        if not users.exists(data.user_id):
            raise ProblemError(404, f"no user {data.user_id}")
        amount = positive_units(str(data.amount))
        cause_id = uuid5(_IDEMPOTENCY_NS, idempotency_key) if idempotency_key else uuid4()
        cause = Cause("admin_grant", str(cause_id))
        entry = billing.deposit(data.user_id, "grant", amount, cause, data.reason)
        if entry is None:  # the same Idempotency-Key again: answer the first result
            _, entries = billing.history(data.user_id)
            entry = next(e for e in entries if e.cause == cause)
            if entry.amount != amount:
                raise ProblemError(409, "this Idempotency-Key was used with a different body")
        return _entry(entry)


@post("/v1/stream-tokens", status_code=201)
async def stream_token(
    request: Request[User, Any, Any], stream_tokens: NamedDependency[StreamTokens]
) -> dto.StreamToken:
    """A short-lived token for ``?token=`` on the feeds, bound to the caller."""
    token, expires = stream_tokens.issue(request.user.id)
    return dto.StreamToken(token=token, expires_at=expires)


ROUTES: list[ControllerRouterHandler] = [Health, Me, Credits, Admin, stream_token]
