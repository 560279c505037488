"""Short-lived signed stream tokens, for clients that cannot send an Authorization header.

A browser's ``EventSource`` and ``WebSocket`` cannot; an authenticated call issues a token bound
to the user (an HS256 JWT with audience ``pixevo:stream``), which the feed endpoints accept as
``?token=``. The secret is ``PIXEVO_STREAM_SECRET``, or one made once in the data dir and shared
by every process on it.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import jwt

from application.errors import Forbidden

AUDIENCE = "pixevo:stream"
DEFAULT_TTL = timedelta(minutes=5)


class InvalidStreamToken(Forbidden):
    pass


class StreamTokens:
    def __init__(self, secret: bytes, ttl: timedelta = DEFAULT_TTL) -> None:
        if len(secret) < 32:
            raise ValueError("the stream token secret must be at least 32 bytes")
        self._secret, self.ttl = secret, ttl

    def issue(self, user_id: UUID, now: datetime | None = None) -> tuple[str, datetime]:
        now = now or datetime.now(UTC)
        expires = now + self.ttl
        claims = {"sub": str(user_id), "aud": AUDIENCE, "iat": now, "exp": expires}
        return jwt.encode(claims, self._secret, algorithm="HS256"), expires

    def verify(self, token: str) -> UUID:
        """The user the token was issued to; raises :class:`InvalidStreamToken`."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                options={"require": ["sub", "exp", "aud"]},
            )
            return UUID(claims["sub"])
        except jwt.ExpiredSignatureError:
            raise InvalidStreamToken("the stream token has expired") from None
        except (jwt.InvalidTokenError, ValueError):
            raise InvalidStreamToken("the stream token is not valid") from None


def stream_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured secret, else the data dir's (made on first use, readable by us only)."""
    if configured:
        return configured.encode()
    path = data_dir / "stream-secret"
    if not path.exists():  # written aside, then linked: processes starting together agree
        data_dir.mkdir(parents=True, exist_ok=True)
        draft = data_dir / f".stream-secret.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip().encode()
