"""Small ports the use cases need from the outside world (implemented in infrastructure/)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from application.errors import Unavailable


@runtime_checkable  # the API's controllers take one by injection, which checks its type
class BlobStore(Protocol):
    """Object storage for results: local files by default, a bucket in production."""

    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes: ...


class ResultCache(Protocol):
    """Completed results by request fingerprint (deterministic models with an explicit seed)."""

    def find(self, fingerprint: str) -> tuple[UUID, dict[str, Any]] | None:
        """(source generation id, its result metadata) of an identical completed request."""
        ...


class CircuitOpen(Unavailable):
    """A provider's circuit is open: calls are refused until it has had time to recover."""


class CircuitBreakers(Protocol):
    """One breaker per provider, its state shared by every worker process."""

    def is_open(self, provider: str) -> bool: ...

    def guard(self, provider: str) -> AbstractContextManager[None]:
        """Counts an unhealthy failure raised inside; raises :class:`CircuitOpen` when open."""
        ...


class Deferral(Exception):
    """The work cannot go on now. The worker parks its message durably (in PostgreSQL, not in
    the broker) and runs it again after ``delay_s``; with ``delay_s`` ``None``, when a slot of
    ``user_id``'s frees (first in, first out per user: see :class:`ProviderSlots`)."""

    def __init__(
        self,
        reason: str,
        delay_s: float | None,
        *,
        generation_id: UUID | None = None,
        user_id: UUID | None = None,
    ) -> None:
        super().__init__(reason)
        self.delay_s = delay_s
        self.generation_id, self.user_id = generation_id, user_id


class ProviderSlots(Protocol):
    """The per-user cap on generations at a provider at once, shared by every worker."""

    @property
    def cap(self) -> int: ...

    def take(self, user_id: UUID, generation_id: UUID) -> bool:
        """A slot for the generation (the one it holds already, if any); ``False`` when the
        user has ``cap`` taken, or older generations of theirs wait for one."""
        ...

    def release(self, generation_id: UUID) -> None:
        """Frees its slot (if any) and wakes whoever admits the user's next waiting one."""
        ...
