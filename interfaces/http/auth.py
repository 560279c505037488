"""Bearer API-key authentication and the admin guard."""

from __future__ import annotations

import time
from typing import Annotated, Any

import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.params import QueryParameter
from psycopg_pool import AsyncConnectionPool

from application.users import User, hash_key
from infrastructure.identity import user_by_id, user_for_key_hash
from infrastructure.tokens import InvalidStreamToken, StreamTokens

PUBLIC_PATHS = ["^/health$", "^/ready$", "^/schema"]
_MAX_KEY_LENGTH = 200
#: How long a process trusts a key it has looked up (a revoked key works this long at most).
KEY_CACHE_TTL_S = 5.0
_KEY_CACHE_SIZE = 10_000


class KeyCache:
    """Recently seen keys, by hash, so a busy client costs one lookup per few seconds."""

    def __init__(self, ttl_s: float = KEY_CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[bytes, tuple[float, User]] = {}

    def get(self, key_hash: bytes) -> User | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: bytes, user: User) -> None:
        if len(self._entries) >= _KEY_CACHE_SIZE:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl_s, user)


#: Route option of the handlers that also accept a stream token (``?token=``).
STREAM_TOKEN_OPT = "stream_token"  # noqa: S105 - a route option's name
STREAM_OPT = {STREAM_TOKEN_OPT: True}
#: The ``?token=`` of such a handler (declared for the OpenAPI description; the middleware
#: reads it).
TokenQuery = Annotated[str | None, QueryParameter(name="token", max_length=2000)]


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = connection.query_params.get("token")
        if token is not None and connection.route_handler.opt.get(STREAM_TOKEN_OPT):
            return await self._with_token(connection, token)
        return await self._with_key(connection)

    async def _with_token(
        self, connection: ASGIConnection[Any, Any, Any, Any], token: str
    ) -> AuthenticationResult:
        tokens: StreamTokens = connection.app.state.stream_tokens
        try:
            user_id = tokens.verify(token)
        except InvalidStreamToken as invalid:
            raise NotAuthorizedException(str(invalid)) from None
        if connection.headers.get("authorization"):  # both: they must name the same user
            by_key = await self._with_key(connection)
            if by_key.user.id != user_id:
                raise NotAuthorizedException("the stream token was issued to another user")
            return by_key
        user = await user_by_id(connection.app.state.pool, user_id)
        if user is None:
            raise NotAuthorizedException("the stream token is not valid")
        structlog.contextvars.bind_contextvars(user_id=str(user.id))
        return AuthenticationResult(user=user, auth=token)

    async def _with_key(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise NotAuthorizedException("an 'Authorization: Bearer <api key>' header is required")
        if len(key) > _MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
            raise NotAuthorizedException("the API key is not valid")
        cache: KeyCache = connection.app.state.key_cache
        key_hash = hash_key(key)
        user = cache.get(key_hash)
        if user is None:
            pool: AsyncConnectionPool = connection.app.state.pool
            user = await user_for_key_hash(pool, key_hash)
            if user is None:
                raise NotAuthorizedException("the API key is not valid")
            cache.put(key_hash, user)
        structlog.contextvars.bind_contextvars(user_id=str(user.id))
        return AuthenticationResult(user=user, auth=key)


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Admin routes need the key of an admin user. ``OPTIONS`` (Litestar's own handler, which
    tells what the route allows) is answered without a key, so there is no user to check."""
    if connection.scope.get("method") == "OPTIONS":
        return
    user: User = connection.user
    if not user.admin:
        raise PermissionDeniedException("this route needs the key of an admin user")
