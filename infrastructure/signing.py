"""Signed, expiring links to stored blobs, for those who hold no API key: a provider fetching
an image input from the API (``GET /v1/files/{key}?expires=&signature=``).

The signature is an HMAC-SHA256 of the key and the expiry (Unix seconds) with the platform's
stream secret (``PIXEVO_STREAM_SECRET``, or the data dir's), under a label of its own so a
link can never pass for a stream token or the reverse. Every API and worker process shares it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from application.assets import SIGNED_PREFIXES, signed_path

_LABEL = b"pixevo:asset-link\n"
#: How long a link works: long enough for a provider's queue, short enough to leak little.
DEFAULT_TTL_S = 3600


class AssetSigner:
    def __init__(self, secret: bytes, ttl_s: int = DEFAULT_TTL_S) -> None:
        if len(secret) < 32:
            raise ValueError("the signing secret must be at least 32 bytes")
        self._secret, self.ttl_s = secret, ttl_s

    def _signature(self, key: str, expires: int) -> str:
        message = _LABEL + f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def path(self, key: str, now: float | None = None) -> str:
        """The link's path and query (the caller puts the public base URL before it)."""
        if not key.startswith(SIGNED_PREFIXES):
            raise ValueError(f"{key!r} is not a blob that links may serve")
        expires = int(now if now is not None else time.time()) + self.ttl_s
        return signed_path(key, expires, self._signature(key, expires))

    def verify(self, key: str, expires: int, signature: str, now: float | None = None) -> bool:
        """Whether the link is one we made for ``key`` and has not expired."""
        if not key.startswith(SIGNED_PREFIXES):
            return False
        if expires < (now if now is not None else time.time()):
            return False
        return hmac.compare_digest(self._signature(key, expires), signature)
