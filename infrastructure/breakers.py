"""Circuit breakers per provider (pybreaker), their state shared by all workers through Redis.

Only failures that say a provider is unhealthy (timeouts, unavailability) count; a rejected
prompt or a bad request does not trip anything.

Anyone may read a breaker's state without touching it (:func:`breaker_states`, with an async
Redis client): the key layout of pybreaker's Redis storage is known here only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import pybreaker
import redis
import redis.asyncio as aioredis

from application.ports import CircuitOpen
from application.providers import UNHEALTHY, ProviderFailure

#: A breaker's defaults: failures in a row that open it, and how long it stays open before
#: it lets one trial call through (half-open).
FAIL_MAX = 3
RESET_TIMEOUT_S = 10.0
#: The fields pybreaker's ``CircuitRedisStorage`` keeps per breaker, under
#: ``<namespace>:pybreaker:<field>``.
_FIELDS = ("state", "fail_counter", "opened_at")

BreakerStatus = Literal["closed", "open", "half-open"]


def breaker_namespace(redis_namespace: str) -> str:
    """Where the platform's breakers live in Redis, given its ``PIXEVO_REDIS_NAMESPACE``."""
    return f"{redis_namespace}:breaker"


def _storage_namespace(namespace: str, provider: str) -> str:
    return f"{namespace}:{provider}"


def _key(namespace: str, provider: str, field: str) -> str:
    """The Redis key of one field of ``provider``'s breaker (pybreaker's layout)."""
    storage = _storage_namespace(namespace, provider)
    return f"{storage}:{pybreaker.CircuitRedisStorage.BASE_NAMESPACE}:{field}"


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A provider's breaker as the workers see it: ``open`` while it refuses calls,
    ``half-open`` once its reset timeout passed (the next call is a trial), else ``closed``.
    ``failures``: unhealthy failures counted since it last closed."""

    provider: str
    state: BreakerStatus
    failures: int
    opened_at: datetime | None
    #: When an open breaker lets a trial call through.
    retry_at: datetime | None


async def breaker_states(
    client: aioredis.Redis,
    namespace: str,
    providers: Iterable[str],
    *,
    reset_timeout_s: float = RESET_TIMEOUT_S,
    now: datetime | None = None,
) -> dict[str, BreakerState]:
    """Each provider's breaker state, read from Redis in one round trip and changing nothing
    (a breaker never used reads as closed). ``namespace``: :func:`breaker_namespace`'s."""
    names = list(dict.fromkeys(providers))
    keys = [_key(namespace, p, field) for p in names for field in _FIELDS]
    values = await client.mget(keys) if keys else []
    at = now or datetime.now(UTC)
    found: dict[str, BreakerState] = {}
    for n, provider in enumerate(names):
        raw_state, raw_failures, raw_opened = values[n * 3 : n * 3 + 3]
        stored = _text(raw_state) or pybreaker.STATE_CLOSED
        opened_at = retry_at = None
        state: BreakerStatus = "closed"
        if stored in (pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN):
            state = "half-open" if stored == pybreaker.STATE_HALF_OPEN else "open"
            if raw_opened:
                opened_at = datetime.fromtimestamp(int(_text(raw_opened)), UTC)
                retry_at = datetime.fromtimestamp(opened_at.timestamp() + reset_timeout_s, UTC)
                if state == "open" and at >= retry_at:
                    state = "half-open"  # the next call goes through, as a trial
        failures = _text(raw_failures)
        found[provider] = BreakerState(
            provider, state, int(failures) if failures else 0, opened_at, retry_at
        )
    return found


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _healthy(error: BaseException) -> bool:
    return not (isinstance(error, ProviderFailure) and error.kind in UNHEALTHY)


class RedisCircuitBreakers:
    def __init__(
        self,
        redis_url: str,
        namespace: str,
        *,
        fail_max: int = FAIL_MAX,
        reset_timeout_s: float = RESET_TIMEOUT_S,
    ) -> None:
        self.client = redis.Redis.from_url(redis_url)  # bytes mode, as pybreaker's storage needs
        self.namespace = namespace
        self.fail_max, self.reset_timeout_s = fail_max, reset_timeout_s
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}

    def breaker(self, provider: str) -> pybreaker.CircuitBreaker:
        found = self._breakers.get(provider)
        if found is None:
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED,
                self.client,
                namespace=_storage_namespace(self.namespace, provider),
            )
            found = pybreaker.CircuitBreaker(
                fail_max=self.fail_max,
                reset_timeout=self.reset_timeout_s,
                exclude=[_healthy],
                state_storage=storage,
                name=provider,
                # the call that opens it raises its own failure: it was made, and failed
                throw_new_error_on_trip=False,
            )
            self._breakers[provider] = found
        return found

    def is_open(self, provider: str) -> bool:
        breaker = self.breaker(provider)
        if breaker.current_state != pybreaker.STATE_OPEN:
            return False
        opened_at = breaker._state_storage.opened_at
        if opened_at is None:
            return True
        return time.time() - opened_at.timestamp() < self.reset_timeout_s

    @contextmanager
    def guard(self, provider: str) -> Iterator[None]:
        try:
            with self.breaker(provider).calling():
                yield
        except pybreaker.CircuitBreakerError:
            raise CircuitOpen(f"{provider}'s circuit is open") from None
