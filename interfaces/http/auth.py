"""Bearer API-key authentication and the admin guard."""

from __future__ import annotations

from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from psycopg_pool import AsyncConnectionPool

from application.users import User
from infrastructure.identity import user_for_key

PUBLIC_PATHS = ["^/health$", "^/ready$", "^/schema"]
_MAX_KEY_LENGTH = 200


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise NotAuthorizedException("an 'Authorization: Bearer <api key>' header is required")
        if len(key) > _MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
            raise NotAuthorizedException("the API key is not valid")
        pool: AsyncConnectionPool = connection.app.state.pool
        user = await user_for_key(pool, key)
        if user is None:
            raise NotAuthorizedException("the API key is not valid")
        structlog.contextvars.bind_contextvars(user_id=str(user.id))
        return AuthenticationResult(user=user, auth=key)


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Admin routes need the key of an admin user."""
    user: User = connection.user
    if not user.admin:
        raise PermissionDeniedException("this route needs the key of an admin user")
