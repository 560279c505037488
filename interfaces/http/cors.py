"""Browsers: which other origins may call the API (``PIXEVO_CORS_ORIGINS``), and the same rule
for the WebSocket, which CORS does not cover (a browser opens a socket to any origin and only
says where the page came from in ``Origin``).

A preflight (``OPTIONS`` with ``Origin``) is answered before routing by Litestar's CORS
middleware; an ``OPTIONS`` without one reaches the route's own handler, which needs no key.
"""

from __future__ import annotations

from typing import Any

from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.exceptions import WebSocketException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

#: What a browser may send on a cross-origin request beyond the CORS-safelisted headers.
ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"]
#: What a page may read from an answer beyond the CORS-safelisted ones.
EXPOSE_HEADERS = [
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "Retry-After",
    "Location",
    "X-Request-ID",
]
ALLOW_METHODS: list[Any] = ["GET", "POST", "DELETE", "OPTIONS"]
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


def socket_origin_guard(origins: tuple[str, ...]) -> Guard:
    """An app guard for WebSockets: a browser's socket from an origin that is neither the API's
    own nor listed is refused (before the handshake is accepted). Clients that are not
    browsers send no ``Origin`` and are let through (they authenticate like any other)."""
    allowed = frozenset(origins)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if connection.scope["type"] != ScopeType.WEBSOCKET:
            return
        origin = connection.headers.get("origin")
        if origin is None or origin in allowed or _same_origin(connection, origin):
            return
        raise WebSocketException(
            detail=f"WebSocket connections from {origin[:100]} are refused", code=REFUSED_ORIGIN
        )

    return guard
