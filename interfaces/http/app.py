"""The app factory: the single place where the web app is wired."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from litestar import Litestar
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Receive, Scope, Send
from psycopg_pool import AsyncConnectionPool

from infrastructure.tokens import StreamTokens, stream_secret
from interfaces.bootstrap import Container
from interfaces.http import feeds, generation_routes, problems
from interfaces.http.auth import PUBLIC_PATHS, ApiKeyAuthentication, KeyCache
from interfaces.http.routes import ROUTES
from projections.model_timings import Timings

MAX_BODY_BYTES = 1_000_000
log = structlog.get_logger(__name__)


def request_context(app: ASGIApp) -> ASGIApp:
    """Binds a request id (the client's ``X-Request-ID`` or a new one) for every log line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
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
            if scope["type"] == "http":
                log.info(
                    "http.request",
                    method=scope.get("method"),
                    status=status,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )

    return middleware


def create_app(container: Container) -> Litestar:
    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        # autocommit: the API only reads, one statement at a time; no BEGIN/COMMIT round trips
        pool = AsyncConnectionPool(
            container.database_url,
            min_size=2,
            max_size=16,
            open=False,
            timeout=5,
            kwargs={"autocommit": True},
        )
        await pool.open(wait=False)
        client = aioredis.Redis.from_url(container.redis_url, socket_timeout=2)
        app.state.pool, app.state.redis, app.state.key_cache = pool, client, KeyCache()
        app.state.timings = Timings(pool, container.seed_timing)
        app.state.heartbeat_s = container.settings.sse_heartbeat_s
        app.state.feed_reads = asyncio.Semaphore(feeds.CONCURRENT_READS)
        app.state.subscribe_lock = asyncio.Lock()
        app.state.streaming_models = frozenset(
            spec.key for spec in container.catalogue if spec.capabilities.streaming
        )
        try:
            yield
        finally:
            await client.aclose()
            await pool.close()

    settings = container.settings
    # the live feeds: one pub/sub connection per process, fanned out to its subscribers
    channels = ChannelsPlugin(
        backend=RedisChannelsPubSubBackend(
            redis=aioredis.Redis.from_url(container.redis_url, socket_connect_timeout=2)
        ),
        arbitrary_channels_allowed=True,
        subscriber_max_backlog=1000,
        subscriber_backlog_strategy="dropleft",
    )
    return Litestar(
        route_handlers=[*ROUTES, *generation_routes.ROUTES, *feeds.ROUTES],
        lifespan=[resources],
        plugins=[channels],
        state=State(
            {
                "stream_tokens": StreamTokens(
                    stream_secret(settings.stream_secret, settings.data_dir)
                )
            }
        ),
        dependencies={"container": Provide(lambda: container, sync_to_thread=False)},
        middleware=[
            request_context,
            DefineMiddleware(ApiKeyAuthentication, exclude=PUBLIC_PATHS),
        ],
        exception_handlers={Exception: problems.handle},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=OpenAPIConfig(
            title="Pixevo API",
            version="1",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
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
