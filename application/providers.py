"""The provider port: one protocol for every wire style, and one taxonomy of failures.

    ProviderFailure(kind)
      rate_limited      429; carries retry_after_s          retried after the stated delay
      timeout           no answer in time                   retried; counts against the breaker
      unavailable       5xx, refused connections, outages   retried; counts against the breaker
      provider_error    the job failed for no stated reason retried
      content_rejected  the provider's safety filter        final; the user is told
      invalid_request   the provider refused the input      final; our normalisation missed it

The kind drives retry, fallback and what the user is told; adapters map each provider's
statuses, bodies and exceptions onto it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from application.catalogue import ModelSpec
from application.normalise import Normalised

FailureKind = Literal[
    "rate_limited",
    "timeout",
    "unavailable",
    "provider_error",
    "content_rejected",
    "invalid_request",
]
RETRYABLE: frozenset[str] = frozenset({"rate_limited", "timeout", "unavailable", "provider_error"})
#: Failures that say the provider is unhealthy (they trip its circuit breaker).
UNHEALTHY: frozenset[str] = frozenset({"timeout", "unavailable"})


class ProviderFailure(Exception):
    def __init__(
        self, kind: FailureKind, message: str, *, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind: FailureKind = kind
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


@dataclass(frozen=True, slots=True)
class Output:
    """What a provider produced: the bytes, or where to fetch them."""

    url: str | None
    data: bytes | None
    width: int
    height: int
    content_type: str


@dataclass(frozen=True, slots=True)
class Submitted:
    """A job the provider accepted; synchronous providers answer with the output at once."""

    job_id: str | None
    output: Output | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    percent: float
    preview_url: str | None = None


ProgressSink = Callable[[Progress], None]


class ProviderAdapter(Protocol):
    """Speaks one wire style. Adapters are production code: real URLs and keys work."""

    def submit(self, model: ModelSpec, request: Normalised) -> Submitted: ...

    def wait(
        self,
        model: ModelSpec,
        job_id: str,
        on_progress: ProgressSink | None = None,
    ) -> Output:
        """Polls or streams the job until it ends; raises :class:`ProviderFailure`."""
        ...

    def cancel(self, model: ModelSpec, job_id: str) -> bool:
        """``True`` once the provider confirms the job is cancelled (it will not deliver);
        ``False`` when it had already finished (what it delivered stands)."""
        ...

    def fetch(self, output: Output) -> bytes: ...


class ProviderDirectory(Protocol):
    """The adapter that speaks to a model's provider."""

    def for_model(self, model: ModelSpec) -> ProviderAdapter: ...
