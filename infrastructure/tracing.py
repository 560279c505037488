"""OpenTelemetry tracing, set up once per process, and its propagation through Dramatiq.

A generation is one trace: the request's server span (Litestar's OpenTelemetry plugin), the
event-store save, then for every event a reaction follows, the dispatcher's span (the event's
stored trace context, see :mod:`application.tracing`) → the Dramatiq message → the actor's
span → the reaction, its provider calls (httpx, which sends ``traceparent`` on) and its saves.

Tracing is on unless ``PIXEVO_TRACING=off``: trace and span ids are then on every log line and
every response, whether or not spans are exported. Export is by OTLP/HTTP when
``PIXEVO_OTLP_ENDPOINT`` is set, and as JSON lines appended to ``PIXEVO_TRACE_FILE`` when that
is set (development and tests; one line per span, every process appending to the same file).
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from typing import IO, Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from application.tracing import tracer
from infrastructure.settings import Settings

#: Where a message carries its sender's trace context (Dramatiq encodes options with it).
MESSAGE_OPTION = "trace_context"
_configured = False


class RootSampler(Sampler):
    """Whether a new trace is recorded. Traces start at work (a request, a message, a step),
    never at a client call of its own: the projection runners' and the dispatcher's polling
    queries would each start a trace of one span, thousands a minute, with nothing to say. Of
    the rest, ``ratio`` are recorded (``PIXEVO_TRACE_SAMPLE_RATIO``); what a recorded trace
    leads to is recorded too, wherever it runs (the platform's sampler is parent-based), and
    an unrecorded one still has its trace id on every log line and response."""

    def __init__(self, ratio: float = 1.0) -> None:
        self.ratio = ratio
        self._sampled = ALWAYS_ON if ratio >= 1 else TraceIdRatioBased(ratio)

    def should_sample(
        self,
        parent_context: context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        sampler = ALWAYS_OFF if kind == SpanKind.CLIENT else self._sampled
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"RootSampler(ratio={self.ratio})"


def batched(exporter: SpanExporter) -> BatchSpanProcessor:
    """Spans exported in the background, in small batches often: with the library's defaults
    (a 2,048-span queue exported every 5 s) a busy API filled the queue between exports and
    dropped spans, logging a warning for each, which cost more than the spans themselves."""
    return BatchSpanProcessor(
        exporter, max_queue_size=16_384, schedule_delay_millis=200, max_export_batch_size=512
    )


def _json_line(span: ReadableSpan) -> str:
    line: str = span.to_json(indent=None)
    return line + "\n"


def configure_tracing(settings: Settings) -> None:
    """Installs this process's tracer provider and instrumentations (once per process)."""
    global _configured  # noqa: PLW0603 - a tracer provider is process-global by nature
    if _configured or not settings.tracing:
        return
    _configured = True
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(root=RootSampler(settings.trace_sample_ratio)),
    )
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        endpoint = settings.otlp_endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"
        provider.add_span_processor(batched(OTLPSpanExporter(endpoint, timeout=5)))
    if settings.trace_file:
        out: IO[str] = settings.trace_file.open("a", buffering=1, encoding="utf-8")
        exporter = ConsoleSpanExporter(out=out, formatter=_json_line)
        provider.add_span_processor(batched(exporter))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)
    _instrument_clients(settings.trace_sql)


def _instrument_clients(sql: bool) -> None:
    """httpx (the providers, the classifier: ``traceparent`` goes with every call) and, when
    asked for (``PIXEVO_TRACE_SQL``), psycopg: a span per statement costs about as much CPU as
    the statement itself (measured: three SELECTs of GET /v1/credits doubled the API's CPU)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor  # noqa: PLC0415

    HTTPXClientInstrumentor().instrument()
    if sql:
        PsycopgInstrumentor().instrument(enable_commenter=False, skip_dep_check=True)


class TracePropagation(Middleware):
    """Carries the sender's trace context in the message and continues it where the message is
    processed: a CONSUMER span around the actor, current while it runs (so the reaction's
    spans, its provider calls and its log lines are in the sender's trace). A retried message
    keeps the context it was first sent with."""

    def __init__(self) -> None:
        self._local = threading.local()

    def before_enqueue(self, _broker: dramatiq.Broker, message: Any, _delay: int) -> None:
        if MESSAGE_OPTION not in message.options:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            if carrier:
                message.options[MESSAGE_OPTION] = carrier

    def before_process_message(self, _broker: dramatiq.Broker, message: MessageProxy) -> None:
        carried = message.options.get(MESSAGE_OPTION) or {}
        parent = propagate.extract(carried) if carried else None
        name = f"{message.actor_name} {message.kwargs.get('reaction', '')}".rstrip()
        span = tracer.start_span(
            name,
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "dramatiq",
                "messaging.destination.name": message.queue_name,
                "messaging.message.id": message.message_id,
            },
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        self._local.span, self._local.token = span, token

    def after_process_message(
        self,
        _broker: dramatiq.Broker,
        _message: MessageProxy,
        *,
        result: object = None,  # noqa: ARG002 - Dramatiq's hook signature
        exception: BaseException | None = None,
    ) -> None:
        span = getattr(self._local, "span", None)
        if span is None:
            return
        if exception is not None:
            span.record_exception(exception)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exception)[:200]))
        span.end()
        context.detach(self._local.token)
        self._local.span = self._local.token = None

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        self.after_process_message(broker, message)
