"""Circuit breakers per provider (pybreaker), their state shared by all workers through Redis.

Only failures that say a provider is unhealthy (timeouts, unavailability) count; a rejected
prompt or a bad request does not trip anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pybreaker
import redis

from application.ports import CircuitOpen
from application.providers import UNHEALTHY, ProviderFailure


def _healthy(error: BaseException) -> bool:
    return not (isinstance(error, ProviderFailure) and error.kind in UNHEALTHY)


class RedisCircuitBreakers:
    def __init__(
        self, redis_url: str, namespace: str, *, fail_max: int = 3, reset_timeout_s: float = 10.0
    ) -> None:
        self.client = redis.Redis.from_url(redis_url)  # bytes mode, as pybreaker's storage needs
        self.namespace = namespace
        self.fail_max, self.reset_timeout_s = fail_max, reset_timeout_s
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}

    def breaker(self, provider: str) -> pybreaker.CircuitBreaker:
        found = self._breakers.get(provider)
        if found is None:
            storage = pybreaker.CircuitRedisStorage(
                pybreaker.STATE_CLOSED, self.client, namespace=f"{self.namespace}:{provider}"
            )
            found = pybreaker.CircuitBreaker(
                fail_max=self.fail_max,
                reset_timeout=self.reset_timeout_s,
                exclude=[_healthy],
                state_storage=storage,
                name=provider,
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
