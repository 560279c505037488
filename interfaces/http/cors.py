"""Browsers: which other origins may call the API (``PIXEVO_CORS_ORIGINS``), and the same rule
for the WebSocket, which CORS does not cover (a browser opens a socket to any origin and only
says where the page came from in ``Origin``).

A preflight (``OPTIONS`` with ``Origin``) is answered before routing by Litestar's CORS
middleware; an ``OPTIONS`` without one reaches the route's own handler, which needs no key.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import WebSocketException
from litestar.handlers.base import BaseRouteHandler
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Message, Receive, Scope, Send

#: What a browser may send on a cross-origin request beyond the CORS-safelisted headers.
ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "traceparent",
    "tracestate",
]
#: What a page may read from an answer beyond the CORS-safelisted ones.
EXPOSE_HEADERS = [
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    "Location",
    "X-Request-ID",
    "traceparent",
]
ALLOW_METHODS: list[Any] = ["GET", "POST", "PATCH", "DELETE", "OPTIONS"]
PREFLIGHT_MAX_AGE_S = 600
#: The close code of a refused socket (4000 + the HTTP status, as Litestar closes others).
REFUSED_ORIGIN = 4403


def cors_config(origins: tuple[str, ...]) -> CORSConfig | None:
    """The CORS rules for ``origins`` (none: no cross-origin calls at all)."""
    if not origins:
        return None
    return CORSConfig(
        allow_origins=list(origins),
        allow_methods=ALLOW_METHODS,
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
        allow_credentials=False,  # bearer keys and stream tokens, never cookies
        max_age=PREFLIGHT_MAX_AGE_S,
    )


def _same_origin(connection: ASGIConnection[Any, Any, Any, Any], origin: str) -> bool:
    scheme = "https" if connection.scope.get("scheme") in ("https", "wss") else "http"
    host = connection.headers.get("host", "")
    return bool(host) and origin == f"{scheme}://{host}"


#: Where the app's state keeps the allowed origins, for the WebSocket's guard.
ORIGINS_STATE = "cors_origins"


def socket_origin_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """The WebSocket route's guard: a browser's socket from an origin that is neither the API's
    own nor listed (``PIXEVO_CORS_ORIGINS``, in the app's state) is refused before the handshake
    is accepted. Clients that are not browsers send no ``Origin`` and are let through (they
    authenticate like any other). On the route, not the app: Litestar copies the handler for
    every guard call, which cost each HTTP request a few per cent."""
    origin = connection.headers.get("origin")
    if origin is None or _same_origin(connection, origin):
        return
    if origin in connection.app.state.get(ORIGINS_STATE, ()):
        return
    raise WebSocketException(
        detail=f"WebSocket connections from {origin[:100]} are refused", code=REFUSED_ORIGIN
    )


def _untyped(path: str) -> str:
    """``/v1/listings/{listing_id:uuid}`` -> ``/v1/listings/{listing_id}``: a route's path and
    a request's path template name their parameters alike only without the types."""
    return re.sub(r"{(\w+):[^}]+}", r"{\1}", path)


def allow_header(app: ASGIApp) -> ASGIApp:
    """Middleware: Litestar's own ``OPTIONS`` answer lists in ``Allow`` the methods of the
    first handler registered on a path only (``/v1/generations`` said ``OPTIONS, POST`` but
    takes ``GET`` too); this lists every method the path's route takes."""
    allowed: dict[str, bytes] = {}

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "OPTIONS":
            await app(scope, receive, send)
            return
        if not allowed:
            for route in scope["litestar_app"].routes:
                if isinstance(route, HTTPRoute):
                    allowed[_untyped(route.path)] = ", ".join(sorted(route.methods)).encode()
        methods = allowed.get(_untyped(scope.get("path_template", "")))

        async def send_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and methods is not None:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message["headers"] = [*headers, (b"allow", methods)]
            await send(message)

        await app(scope, receive, send_allow)

    return middleware
