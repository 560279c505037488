"""Per-user rate limits on the routes that create work, shared by every API process.

A route opts in with ``opt=RATE_LIMITED`` (or ``**RATE_LIMITED`` beside other options). Each
user has one token bucket for all such routes: ``per_s`` tokens a second, holding at most
``burst``. The bucket lives in Redis as one number, its *theoretical arrival time* (GCRA), and
one Lua script checks and takes tokens atomically, on Redis's clock, so any number of API
processes share it.

A round trip to Redis costs the event loop about 150 µs of CPU, a tenth of what accepting a
generation costs, so a process takes a small *lease* of tokens at a time and spends it locally
(for at most ``LEASE_S``): at most a quarter of what the bucket holds, never more than
``MAX_LEASE`` nor than the bucket refills in ``LEASE_S`` (so tokens lost to an unspent lease
never outpace the refill), and a single token once the bucket holds fewer than eight. Tokens
are debited in Redis when leased, so no process lets through more than the bucket allows; a
token leased but not used is lost, which only ever makes the limit slightly stricter, and
within the last few tokens every request asks Redis, so the limit is exact where it bites.

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
#: The most tokens a process leases at once, and how long it may spend them.
MAX_LEASE = 8
LEASE_S = 1.0

#: GCRA. KEYS[1]: the user's bucket. ARGV: milliseconds per token, burst, the largest lease.
#: Returns {allowed (0/1), remaining after the lease, ms until a request would pass, ms until
#: the bucket is full, tokens leased}.
_GCRA = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local capacity = interval * burst
local available = math.floor((capacity - (tat - now)) / interval)
if available < 1 then
  return {0, 0, math.ceil(tat + interval - capacity - now), math.ceil(tat - now), 0}
end
local lease = math.max(1, math.min(tonumber(ARGV[3]), math.floor(available / 4)))
local new_tat = tat + lease * interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1)
return {1, available - lease, 0, math.ceil(new_tat - now), lease}
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


@dataclass(slots=True)
class _Lease:
    """Tokens this process took from a user's bucket and has not spent yet."""

    left: int
    remaining: int  # what the bucket held beyond the lease when it was taken
    until: float  # monotonic: spend by then
    full_at: float  # monotonic: when the bucket is full again


class RateLimiter:
    """Token buckets per user in Redis, spent through small per-process leases."""

    def __init__(
        self,
        redis: aioredis.Redis,
        namespace: str,
        per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._script = redis.register_script(_GCRA)
        self._prefix = f"{namespace}:ratelimit:"
        self._interval_ms = 1000.0 / per_s
        self.burst = burst
        self._lease = max(1, min(MAX_LEASE, math.floor(per_s * LEASE_S)))
        self._clock = clock
        self._skip_until = 0.0
        self._leases: dict[str, _Lease] = {}

    async def take(self, user_id: str) -> Decision | None:
        """Takes a token of ``user_id``'s bucket; ``None`` when Redis cannot say (fail open)."""
        now = self._clock()
        lease = self._leases.get(user_id)
        if lease is not None and lease.left > 0 and now < lease.until:
            lease.left -= 1
            return self._allowed(lease, now)
        if now < self._skip_until:
            return None
        try:
            answer = await self._script(
                keys=[self._prefix + user_id], args=[self._interval_ms, self.burst, self._lease]
            )
        except (RedisError, OSError) as error:
            self._skip_until = self._clock() + OUTAGE_S
            log.warning("ratelimit.unavailable", error=str(error), failing="open")
            return None
        allowed, remaining, retry_ms, reset_ms, leased = (int(v) for v in answer)
        if not allowed:
            self._leases.pop(user_id, None)
            return Decision(
                allowed=False,
                limit=self.burst,
                remaining=0,
                retry_after_s=max(1, math.ceil(retry_ms / 1000)),
                reset_s=math.ceil(reset_ms / 1000),
            )
        if len(self._leases) > 10_000:  # forget spent and stale leases now and then
            self._leases = {u: v for u, v in self._leases.items() if v.left and now < v.until}
        lease = self._leases.get(user_id)
        if lease is not None and now < lease.until:  # concurrent requests leased too: pool them
            lease.left += leased - 1
            lease.remaining, lease.until = max(0, remaining), now + LEASE_S
            lease.full_at = now + reset_ms / 1000
        else:
            lease = _Lease(leased - 1, max(0, remaining), now + LEASE_S, now + reset_ms / 1000)
            self._leases[user_id] = lease
        return self._allowed(lease, now)

    def _allowed(self, lease: _Lease, now: float) -> Decision:
        return Decision(
            allowed=True,
            limit=self.burst,
            remaining=lease.remaining + lease.left,
            retry_after_s=0,
            reset_s=max(0, math.ceil(lease.full_at - now)),
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
