"""Live progress: the messages the feeds carry, who publishes them, and estimated progress.

Two sources feed a subscriber:

- changes recorded in the event store, published by the generations projection after it commits
  them to its ``feed`` table. They carry their ``position`` (the event's notification id), which is
  the SSE event id a client resumes from; a subscriber drops any it has already sent.
- progress, which is never stored: real percentages and previews from streaming providers
  (published by the worker, at most :data:`PROGRESS_PER_SECOND` a second per generation), and
  estimates for models that report none, computed by the API process from the model's timings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import msgspec

from domain.generation import TERMINAL

#: Message types are ``status``, ``progress`` and, ending a generation's stream, one named
#: after the terminal status it reached.
FINAL_TYPES: frozenset[str] = frozenset(TERMINAL)
PROGRESS_PER_SECOND = 2.0
#: What an estimate shows at the model's P95 time; past it, it creeps towards :data:`CEILING`.
AT_P95 = 90.0
CEILING = 99.0
SLOW_NOTICE = "taking longer than usual"


class LiveMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A change to a generation (``generation_id``) or to a workflow run (``run_id``)."""

    type: str
    user_id: UUID
    data: dict[str, Any]
    generation_id: UUID | None = None
    #: Position in the generations log (the workflows log for a run's message); ``None`` for
    #: progress, which is not stored.
    position: int | None = None
    run_id: UUID | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LiveMessage)


def encode(message: LiveMessage) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> LiveMessage:
    return _decoder.decode(data)


def generation_channel(namespace: str, generation_id: UUID) -> str:
    return f"{namespace}:live:generation:{generation_id}"


def run_channel(namespace: str, run_id: UUID) -> str:
    return f"{namespace}:live:workflow-run:{run_id}"


def channel_of(namespace: str, message: LiveMessage) -> str:
    """The channel of the generation or the run ``message`` is about."""
    if message.run_id is not None:
        return run_channel(namespace, message.run_id)
    if message.generation_id is None:
        raise ValueError("a live message is about a generation or a run")
    return generation_channel(namespace, message.generation_id)


def user_channel(namespace: str, user_id: UUID) -> str:
    return f"{namespace}:live:user:{user_id}"


class LivePublisher(Protocol):
    """Sends messages to the live channels (of the generation and of its user)."""

    def publish(self, messages: Sequence[LiveMessage]) -> None: ...


# -- estimated progress ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    percent: float
    slow: bool


def estimate(elapsed_s: float, p50_s: float, p95_s: float) -> Estimate:
    """Progress after ``elapsed_s`` of a model whose runs take ``p50_s`` (median) and ``p95_s``.

    A logarithmic curve: fast at first, slowing, about 66 % at the median and
    :data:`AT_P95` at P95; past P95 it approaches :data:`CEILING` and never reaches it, so the bar
    shows 100 % only once the result exists.
    """
    p50_s = max(p50_s, 0.001)
    p95_s = max(p95_s, p50_s * 1.01)
    elapsed_s = max(elapsed_s, 0.0)
    scale = p50_s / 4  # where the curve turns from fast to slow
    if elapsed_s <= p95_s:
        percent = AT_P95 * math.log1p(elapsed_s / scale) / math.log1p(p95_s / scale)
        return Estimate(round(percent, 1), slow=False)
    beyond = (elapsed_s - p95_s) / p95_s
    percent = CEILING - (CEILING - AT_P95) * math.exp(-beyond)
    return Estimate(min(round(percent, 1), CEILING - 0.1), slow=True)


# -- real progress from streaming providers --------------------------------------------------


class ProgressRelay:
    """Passes a generation's provider progress on, at most ``per_second`` times a second.

    ``send(percent, preview_url)`` is called with the updates that pass; ``store_preview`` (if
    given) first stores a passing update's preview and returns the URL to publish. Updates
    between two sends are dropped (the next one carries the newer state), but a dropped preview
    travels with the next update that passes, unless that one brings its own.
    """

    def __init__(
        self,
        send: Callable[[float, str | None], None],
        *,
        store_preview: Callable[[str, int], str | None] | None = None,
        per_second: float = PROGRESS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send, self._store = send, store_preview
        self._interval = 1.0 / per_second
        self._clock = clock
        self._last: float | None = None
        self._preview: str | None = None
        self.sent = 0

    def __call__(self, percent: float, preview_url: str | None = None) -> bool:
        self._preview = preview_url or self._preview
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return False
        self._last = now
        url = None
        if self._preview and self._store is not None:
            url = self._store(self._preview, self.sent)
        self._preview = None
        self._send(percent, url)
        self.sent += 1
        return True
