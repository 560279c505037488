"""The trace an event belongs to, kept with the event.

An event recorded while a span is current (a request's, a reaction's) carries that span's W3C
``traceparent`` in its stored state, under :data:`TRACE_FIELD`: whatever reacts to the event,
in whichever process and however much later, continues the same trace. The field is not one
of the event's declared attributes, so nothing else sees it (old events simply have none).

This module uses the OpenTelemetry *API* only, which does nothing until a process installs an
SDK (:mod:`infrastructure.tracing`), the way the standard library's ``logging`` does nothing
until configured.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span

TRACE_FIELD = "_trace"
#: How the field looks in a stored event's JSON state (see :func:`traceparent_in`).
_STORED = b'"' + TRACE_FIELD.encode() + b'":"'
_TRACEPARENT_LENGTH = 55  # "00-" + 32 hex + "-" + 16 hex + "-" + 2 hex

tracer = trace.get_tracer("pixevo")


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def stamp(events: Iterable[Any]) -> None:
    """Gives each event without one the current trace (done where the events are made: a
    group commit saves them later, in another thread, under another span)."""
    parent = current_traceparent()
    if parent is None:
        return
    for event in events:
        # an event is a frozen dataclass: the field is kept beside its declared attributes,
        # in the instance dictionary that the mapper stores
        event.__dict__.setdefault(TRACE_FIELD, parent)


def context_of(event: Any) -> Context | None:
    """The trace context the event was recorded in (``None``: recorded outside any trace)."""
    parent = getattr(event, TRACE_FIELD, None)
    return propagate.extract({"traceparent": parent}) if isinstance(parent, str) else None


def traceparent_in(state: bytes) -> str | None:
    """The ``traceparent`` stamped in a stored event's state, read without decoding the event
    (the dispatcher reads it for every event it relays; the transcoder writes JSON, where the
    value, hex digits and dashes, is never escaped)."""
    at = state.find(_STORED)
    if at < 0:
        return None
    start = at + len(_STORED)
    value = state[start : start + _TRACEPARENT_LENGTH]
    return value.decode("ascii") if len(value) == _TRACEPARENT_LENGTH else None


@contextmanager
def span(
    name: str, parent: Context | None = None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A span around a step of the platform's work (current while it runs)."""
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer.start_as_current_span(name, context=parent, attributes=attrs) as current:
        yield current


def record_span(
    name: str,
    parent: Context | None,
    start: datetime,
    end: datetime,
    attributes: Mapping[str, Any],
    error: str | None = None,
) -> None:
    """A span for work that ran across several messages and processes (a workflow node, a
    run), recorded once it has ended, with its real start and end."""
    attrs = {k: v for k, v in attributes.items() if v is not None}
    done = tracer.start_span(name, context=parent, attributes=attrs, start_time=_ns(start))
    if error is not None:
        done.set_status(trace.Status(trace.StatusCode.ERROR, error[:200]))
    done.end(end_time=_ns(max(start, end)))


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


def annotate(attributes: Mapping[str, Any]) -> None:
    """Adds what became known during a step (a provider's job id) to the current span."""
    current = trace.get_current_span()
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(key, value)


def exporting() -> bool:
    """Whether this process installed a tracer (spans are made at all)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def in_trace() -> bool:
    """Whether a span is current here (a thread with none, such as a group commit's, makes no
    spans of its own: they would start traces that belong to no request)."""
    return trace.get_current_span().get_span_context().is_valid
