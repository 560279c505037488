"""Webhook endpoints, their delivery history and redeliveries (API.md, Webhooks).

Commands go to the webhooks use cases (on a thread: they block); an endpoint is read from its
aggregate (so it is readable the moment it is made, secret and disabling reason included), the
list and the deliveries from the outbox projection (``proj_webhooks``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, Parameter
from litestar.types import ControllerRouterHandler
from psycopg_pool import AsyncConnectionPool

from application.users import User
from application.webhooks import WebhooksApplication
from interfaces.http import webhook_dto as dto
from interfaces.http.problems import FieldError, ProblemError
from interfaces.http.ratelimit import RATE_LIMITED
from projections import position_queries, webhook_queries
from projections.ledger_queries import BadCursor
from projections.webhooks import WebhookEndpointsView

Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]
T = TypeVar("T")


class WebhookServices:
    """What the webhook routes use: the write side (opened on first use) and the pool."""

    def __init__(
        self, webhooks: Callable[[], WebhooksApplication], pool: AsyncConnectionPool
    ) -> None:
        self._webhooks = webhooks
        self.pool = pool

    @property
    def webhooks(self) -> WebhooksApplication:
        return self._webhooks()


Services = NamedDependency[WebhookServices]


async def _paged(read: Callable[[], Awaitable[T]]) -> T:
    try:
        return await read()
    except BadCursor as bad:
        raise ProblemError(400, str(bad)) from None


class Webhooks(Controller):
    path = "/v1/webhooks"

    @post("", status_code=201, opt=RATE_LIMITED)
    async def create(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[dto.CreateWebhook],
        webhook_services: Services,
    ) -> dto.WebhookView:
        """Registers an endpoint for some event types; the answer carries its signing secret.
        Its host must resolve to public addresses only (else 422, saying which)."""
        made = await asyncio.to_thread(
            webhook_services.webhooks.register, request.user.id, data.url, list(data.events)
        )
        return dto.webhook_view(made)

    @get("")
    async def endpoints(
        self,
        request: Request[User, Any, Any],
        webhook_services: Services,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dto.WebhookList:
        """The caller's endpoints, newest first (without their secrets)."""
        pool = webhook_services.pool
        await position_queries.wait_for_head(pool, WebhookEndpointsView)
        rows, next_cursor = await _paged(
            lambda: webhook_queries.endpoints(pool, request.user.id, limit, cursor)
        )
        return dto.WebhookList([dto.webhook_view(r) for r in rows], next_cursor)

    @get("/{webhook_id:uuid}")
    async def endpoint(
        self,
        request: Request[User, Any, Any],
        webhook_id: FromPath[UUID],
        webhook_services: Services,
    ) -> dto.WebhookView:
        """The endpoint, its secret, and whether (and why) it was disabled."""
        doc = await asyncio.to_thread(webhook_services.webhooks.get, request.user.id, webhook_id)
        return dto.webhook_view(doc)

    @delete("/{webhook_id:uuid}", status_code=204)
    async def remove(
        self,
        request: Request[User, Any, Any],
        webhook_id: FromPath[UUID],
        webhook_services: Services,
    ) -> None:
        """Nothing more is sent to it."""
        await asyncio.to_thread(webhook_services.webhooks.delete, request.user.id, webhook_id)

    @post("/{webhook_id:uuid}/enable", status_code=200)
    async def enable(
        self,
        request: Request[User, Any, Any],
        webhook_id: FromPath[UUID],
        webhook_services: Services,
    ) -> dto.WebhookView:
        """A disabled endpoint is sent to again, from what was pending."""
        doc = await asyncio.to_thread(webhook_services.webhooks.enable, request.user.id, webhook_id)
        return dto.webhook_view(doc)

    @get("/{webhook_id:uuid}/deliveries")
    async def deliveries(
        self,
        request: Request[User, Any, Any],
        webhook_id: FromPath[UUID],
        webhook_services: Services,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dto.DeliveryList:
        """What was sent to the endpoint (and is to be), newest first."""
        await asyncio.to_thread(webhook_services.webhooks.endpoint, request.user.id, webhook_id)
        pool = webhook_services.pool
        rows, next_cursor = await _paged(
            lambda: webhook_queries.deliveries(pool, webhook_id, limit, cursor)
        )
        return dto.DeliveryList([dto.delivery_view(r) for r in rows], next_cursor)

    @post("/{webhook_id:uuid}/redeliver", status_code=202, opt=RATE_LIMITED)
    async def redeliver(
        self,
        request: Request[User, Any, Any],
        webhook_id: FromPath[UUID],
        data: JSONBody[dto.Redeliver],
        webhook_services: Services,
    ) -> Response[dto.Redelivery]:
        """Sends again, in their order and with their ``webhook-id``s, the messages of the
        events in ``[since, until)``, behind anything pending."""
        if data.until is not None and data.until <= data.since:
            message = "must be after since"
            raise ProblemError(422, f"until {message}", errors=[FieldError("until", message)])
        await asyncio.to_thread(webhook_services.webhooks.endpoint, request.user.id, webhook_id)
        queued = await webhook_queries.redeliver(
            webhook_services.pool, request.user.id, webhook_id, data.since, data.until
        )
        return Response(dto.Redelivery(queued), status_code=202)


ROUTES: list[ControllerRouterHandler] = [Webhooks]
