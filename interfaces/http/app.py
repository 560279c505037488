"""The app factory: the single place where the web app is wired."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Receive, Scope, Send

from interfaces.bootstrap import Container
from interfaces.http import (
    feed_routes,
    generation_routes,
    marketplace_routes,
    problems,
    upload_routes,
    webhook_routes,
    workflow_routes,
)
from interfaces.http.auth import PUBLIC_PATHS, ApiKeyAuthentication
from interfaces.http.cors import ORIGINS_STATE, allow_header, cors_config
from interfaces.http.openapi import RefinedJson, RefinedSwagger
from interfaces.http.ratelimit import RateLimiter, rate_limit
from interfaces.http.routes import ROUTES

MAX_BODY_BYTES = 1_000_000
log = structlog.get_logger(__name__)


def request_context(app: ASGIApp) -> ASGIApp:
    """Binds a request id (the client's ``X-Request-ID`` or a new one) for every log line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, path=scope.get("path"))

        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            if scope["type"] == ScopeType.HTTP:
                log.info(
                    "http.request",
                    method=scope.get("method"),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )

    return middleware


def _provide(get: Callable[[], object]) -> Provide:
    return Provide(get, sync_to_thread=False)


def create_app(container: Container) -> Litestar:
    """The API over ``container``'s services; the app owns a new set of :class:`Api` resources."""
    api = container.api()

    @asynccontextmanager
    async def resources(_: Litestar) -> AsyncIterator[None]:
        await api.open()
        try:
            yield
        finally:
            await api.close()

    services = generation_routes.GenerationServices(
        lambda: container.generations, api.pool, api.timings, container.blobs
    )
    uploads = upload_routes.UploadServices(
        lambda: container.uploads, container.blobs, container.asset_signer
    )
    marketplace = marketplace_routes.MarketplaceServices(lambda: container.marketplace, api.pool)
    workflows = workflow_routes.WorkflowServices(
        lambda: container.workflows, api.pool, container.blobs
    )
    # what the controllers take by name; built on first use (the API reads only the read side
    # until a route needs the write side)
    dependencies = {
        "services": _provide(lambda: services),
        "upload_services": _provide(lambda: uploads),
        "workflow_services": _provide(lambda: workflows),
        "marketplace_services": _provide(lambda: marketplace),
        "webhook_services": _provide(
            lambda: webhook_routes.WebhookServices(lambda: container.webhooks, api.pool)
        ),
        "billing": _provide(lambda: container.billing),
        "users": _provide(lambda: container.users),
        "catalogue": _provide(lambda: container.catalogue),
        "pool": _provide(lambda: api.pool),
        "redis": _provide(lambda: api.redis),
        "feeds": _provide(lambda: api.feeds),
        "stream_tokens": _provide(lambda: api.stream_tokens),
        # a run not projected yet, from its aggregate (raises a NotFound: 404)
        "run_from_write_side": _provide(lambda: container.workflows.run_document),
        "workflow_from_write_side": _provide(lambda: container.workflows.workflow_document),
        "run_at_event": _provide(lambda: container.workflows.run_at),
    }
    settings = container.settings
    limiter = RateLimiter(
        api.redis, settings.redis_namespace, settings.rate_limit_per_s, settings.rate_limit_burst
    )
    return Litestar(
        route_handlers=[
            *ROUTES,
            *generation_routes.ROUTES,
            *feed_routes.ROUTES,
            *upload_routes.ROUTES,
            *workflow_routes.ROUTES,  # the reads included
            *marketplace_routes.ROUTES,
            *webhook_routes.ROUTES,
        ],
        lifespan=[resources],
        plugins=[api.channels],
        # what the authentication middleware reads (it has no dependency injection)
        state=State(
            {
                "pool": api.pool,
                "key_cache": api.key_cache,
                "stream_tokens": api.stream_tokens,
                ORIGINS_STATE: frozenset(settings.cors_origins),
            }
        ),
        dependencies=dependencies,
        middleware=[
            request_context,
            allow_header,
            DefineMiddleware(ApiKeyAuthentication, exclude=PUBLIC_PATHS),
            rate_limit(limiter),
        ],
        cors_config=cors_config(settings.cors_origins),
        exception_handlers={Exception: problems.handle},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="Pixevo API",
            version="1",
            path="/schema",
            render_plugins=[RefinedJson(), RefinedSwagger()],
            components=Components(
                security_schemes={
                    "BearerAuth": SecurityScheme(
                        type="http", scheme="bearer", description="Authorization: Bearer <api key>"
                    ),
                }
            ),
            security=[{"BearerAuth": []}],
        ),
        logging_config=None,
        debug=False,
    )


def app_from_environment() -> Litestar:
    """For ``uvicorn --factory interfaces.http.app:app_from_environment`` (production)."""
    from interfaces.bootstrap import build, load_settings  # noqa: PLC0415

    return create_app(build(load_settings(), run_migrations=False))
