"""The app factory: the single place where the web app is wired."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusConfig
from litestar.types import ASGIApp, Receive, Scope, Send
from opentelemetry import propagate, trace

from application.tracing import current_traceparent, tracer
from infrastructure.breakers import breaker_namespace, breaker_states
from interfaces.bootstrap import PROJECTIONS, Container
from interfaces.http import (
    feed_routes,
    generation_routes,
    marketplace_routes,
    metrics_routes,
    problems,
    provider_health_routes,
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
#: Requests by route template (never the raw path: ids would be labels), method and status.
REQUEST_METRICS = PrometheusConfig(
    app_name="pixevo", prefix="pixevo_http", group_path=True, exclude=["^/metrics$"]
)
log = structlog.get_logger(__name__)


def request_context(app: ASGIApp) -> ASGIApp:
    """Each request's span (kind SERVER, continuing the client's ``traceparent`` when it sent
    one) and request id (the client's ``X-Request-ID`` or a new one), bound for every log line;
    the answer carries both: ``X-Request-ID`` and the request's own ``traceparent``.

    The span is made here rather than by OpenTelemetry's ASGI middleware, which collects some
    twenty attributes per request and cost more CPU than the request it traced (see issue 13's
    benchmark, ``benchmarks/observability_overhead.py``)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET):
            await app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if 0 < len(given) <= 64 and given.isprintable() else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, path=scope.get("path"))
        method = str(scope.get("method", "GET"))
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                traceparent = current_traceparent()
                if traceparent:
                    headers.append((b"traceparent", traceparent.encode()))
                message["headers"] = headers
            await send(message)

        # named by its route's template once routing knows it (name_span_by_route)
        with server_span(method, headers) as span:
            try:
                await app(scope, receive, send_with_id)
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)
                if scope["type"] == ScopeType.HTTP:
                    log.info(
                        "http.request",
                        method=method,
                        status=status,
                        duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    )

    return middleware


def server_span(method: str, headers: dict[bytes, bytes]) -> Any:
    """The request's span, a child of the caller's span when it sent ``traceparent``."""
    carried = {
        name: headers[key].decode("latin-1")
        for name, key in (("traceparent", b"traceparent"), ("tracestate", b"tracestate"))
        if key in headers
    }
    return tracer.start_as_current_span(
        method,
        context=propagate.extract(carried) if carried else None,
        kind=trace.SpanKind.SERVER,
        attributes={"http.request.method": method},
    )


async def name_span_by_route(request: Request[Any, Any, Any]) -> None:
    """The request's span is named by its route's template (``GET /v1/generations/{id}``), not
    its path (a path holds ids): the span starts before routing knows the template. (Async: a
    plain function here would be run in a thread, a hop per request.)"""
    template = request.scope.get("path_template")
    if template:
        span = trace.get_current_span()
        span.update_name(f"{request.method} {template}")
        span.set_attribute("http.route", template)


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
    settings = container.settings
    breakers_at = breaker_namespace(settings.redis_namespace)
    provider_health = provider_health_routes.ProviderHealthServices(
        api.pool,
        api.redis,
        breakers_at,
        ((spec.provider, spec.key) for spec in container.catalogue),
    )
    providers = sorted({spec.provider for spec in container.catalogue})

    async def breakers() -> dict[str, str]:
        states = await breaker_states(api.redis, breakers_at, providers)
        return {name: breaker.state.replace("-", "_") for name, breaker in states.items()}

    metrics_sources = metrics_routes.MetricsSources(
        pool=api.pool,
        redis=api.redis,
        namespace=settings.redis_namespace,
        projections=PROJECTIONS,
        breakers=breakers,
    )
    # what the controllers take by name; built on first use (the API reads only the read side
    # until a route needs the write side)
    dependencies = {
        "services": _provide(lambda: services),
        "upload_services": _provide(lambda: uploads),
        "workflow_services": _provide(lambda: workflows),
        "marketplace_services": _provide(lambda: marketplace),
        "metrics_sources": _provide(lambda: metrics_sources),
        "provider_health": _provide(lambda: provider_health),
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
            *metrics_routes.ROUTES,
            *provider_health_routes.ROUTES,
            *webhook_routes.ROUTES,
        ],
        lifespan=[resources],
        plugins=[api.channels],
        before_request=name_span_by_route if settings.tracing else None,
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
            REQUEST_METRICS.middleware,
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
