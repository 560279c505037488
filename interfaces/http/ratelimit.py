"""Per-user rate limits on the routes that create work, shared by every API process.

A route opts in with ``opt=RATE_LIMITED`` (or ``**RATE_LIMITED`` beside other options). Each
user has one token bucket for all such routes: ``per_s`` tokens a second, holding at most
``burst``. The bucket lives in Redis as one number, its *theoretical arrival time* (GCRA), and
one Lua script checks and takes a token atomically, on Redis's clock, so any number of API
processes share it exactly.

Every answer on a limited route carries ``RateLimit-Limit`` (the burst), ``RateLimit-Remaining``
(requests that would pass now) and ``RateLimit-Reset`` (seconds until the bucket is full again);
beyond the limit the answer is 429 problem details with ``Retry-After``.

When Redis cannot be reached the limiter *fails open*: the request goes ahead without the
headers, logged once per outage window. A rate limit is fair-use protection, not a guarantee
(credits are held by the billing context whatever happens here); creating work needs only
PostgreSQL, so a Redis outage should not stop it too. A 503 here would turn a degraded
dependency into a full outage of the create routes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis
import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send
from redis.exceptions import RedisError

from application.users import User
from interfaces.http.problems import MEDIA_TYPE, TITLES, Problem

log = structlog.get_logger(__name__)

RATE_LIMIT_OPT = "rate_limited"
#: ``opt=`` of a route handler whose requests count against the caller's rate limit.
RATE_LIMITED = {RATE_LIMIT_OPT: True}
#: After Redis failed, how long requests go ahead unchecked before it is tried again.
OUTAGE_S = 1.0

#: GCRA. KEYS[1]: the user's bucket. ARGV: milliseconds per token, burst. Returns
#: {allowed (0/1), remaining, ms until a request would pass, ms until the bucket is full}.
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local capacity = interval * burst
local new_tat = tat + interval
if new_tat - capacity > now then
  return {0, 0, math.ceil(new_tat - capacity - now), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
local remaining = math.floor((capacity - (new_tat - now)) / interval)
return {1, remaining, 0, math.ceil(new_tat - now)}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class RateLimiter:
    """Token buckets per user in Redis (one atomic script call per request)."""

    def __init__(self, redis: aioredis.Redis, namespace: str, per_s: float, burst: int) -> None:
        self._script = redis.register_script(_GCRA)
        self._prefix = f"{namespace}:ratelimit:"
        self._interval_ms = 1000.0 / per_s
        self.burst = burst
        self._skip_until = 0.0

    async def take(self, user_id: str) -> Decision | None:
        """Takes a token of ``user_id``'s bucket; ``None`` when Redis cannot say (fail open)."""
        if time.monotonic() < self._skip_until:
            return None
        try:
            answer = await self._script(
                keys=[self._prefix + user_id], args=[self._interval_ms, self.burst]
            )
        except (RedisError, OSError) as error:
            self._skip_until = time.monotonic() + OUTAGE_S
            log.warning("ratelimit.unavailable", error=str(error), failing="open")
            return None
        allowed, remaining, retry_ms, reset_ms = (int(v) for v in answer)
        return Decision(
            allowed=bool(allowed),
            limit=self.burst,
            remaining=max(0, remaining),
            retry_after_s=max(1, math.ceil(retry_ms / 1000)),
            reset_s=math.ceil(reset_ms / 1000),
        )


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


async def _too_many(decision: Decision, send: Send) -> None:
    problem = Problem(
        type="/problems/too-many-requests",
        title=TITLES[429],
        status=429,
        detail=f"more than {decision.limit} requests at once; "
        f"try again in {decision.retry_after_s} s",
    )
    body = msgspec.json.encode(problem)
    headers = {
        **decision.headers(),
        "Content-Type": MEDIA_TYPE,
        "Content-Length": str(len(body)),
    }
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 429,
        "headers": _encoded(headers),
    }
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})


def rate_limit(limiter: RateLimiter) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware (a factory Litestar calls with the next app): after authentication, so
    it knows the user; it acts only on routes with :data:`RATE_LIMITED`."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def limited(scope: Scope, receive: Receive, send: Send) -> None:
            handler = scope.get("route_handler")
            user = scope.get("user")
            if (
                scope["type"] != ScopeType.HTTP
                or scope["method"] == "OPTIONS"
                or handler is None
                or not handler.opt.get(RATE_LIMIT_OPT)
                or not isinstance(user, User)
            ):
                await app(scope, receive, send)
                return
            decision = await limiter.take(str(user.id))
            if decision is None:
                await app(scope, receive, send)
                return
            if not decision.allowed:
                log.info("ratelimit.refused", retry_after_s=decision.retry_after_s)
                await _too_many(decision, send)
                return
            extra = _encoded(decision.headers())

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *extra]
                await send(message)

            await app(scope, receive, send_with_headers)

        return limited

    return middleware
