"""The trace context's journey, piece by piece: stamped on events, read back from stored
state, carried by Dramatiq messages; and which spans may start a trace."""

from __future__ import annotations

import threading
from typing import Any
from uuid import uuid4

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, UUIDAsHex
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind

from application import tracing
from infrastructure.settings import Settings, SettingsError
from infrastructure.tracing import RootSampler, TracePropagation

#: A tracer of its own (the process-wide provider is left alone: other tests share it).
tracer = TracerProvider().get_tracer("test")


class Thing(Aggregate):
    class Made(Aggregate.Created):
        name: str


def mapper() -> Mapper[Any]:
    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    return Mapper(transcoder=transcoder)


def test_an_event_made_in_a_span_keeps_its_trace_through_the_store() -> None:
    with tracer.start_as_current_span("request") as span:
        made = Thing._create(Thing.Made, id=uuid4(), name="x")
        events = made.collect_events()
        tracing.stamp(events)
    expected = span.get_span_context()
    stored = mapper().to_stored_event(events[0])
    parent = tracing.traceparent_in(stored.state)
    flags = int(expected.trace_flags)
    assert parent == f"00-{expected.trace_id:032x}-{expected.span_id:016x}-{flags:02x}"
    decoded = mapper().to_domain_event(stored)
    assert isinstance(decoded, Thing.Made) and decoded.name == "x"
    restored = trace.get_current_span(tracing.context_of(decoded)).get_span_context()
    assert (restored.trace_id, restored.span_id) == (expected.trace_id, expected.span_id)


def test_a_stamp_is_not_replaced_by_a_later_span() -> None:
    """A group commit saves a caller's events later, under another span: they keep the
    caller's trace."""
    with tracer.start_as_current_span("caller") as caller:
        event = Thing._create(Thing.Made, id=uuid4(), name="x").collect_events()[0]
        tracing.stamp([event])
    with tracer.start_as_current_span("committer"):
        tracing.stamp([event])
    assert tracing.context_of(event) is not None
    kept = trace.get_current_span(tracing.context_of(event)).get_span_context()
    assert kept.span_id == caller.get_span_context().span_id


def test_outside_any_span_nothing_is_stamped() -> None:
    event = Thing._create(Thing.Made, id=uuid4(), name="x").collect_events()[0]
    tracing.stamp([event])
    assert tracing.context_of(event) is None
    assert tracing.traceparent_in(mapper().to_stored_event(event).state) is None


@pytest.mark.parametrize(
    ("kind", "decision"),
    [
        (SpanKind.CLIENT, Decision.DROP),  # a polling query of its own
        (SpanKind.SERVER, Decision.RECORD_AND_SAMPLE),  # a request
        (SpanKind.CONSUMER, Decision.RECORD_AND_SAMPLE),  # a message
        (SpanKind.INTERNAL, Decision.RECORD_AND_SAMPLE),  # a step
    ],
)
def test_traces_start_at_work_never_at_a_lone_client_call(kind: SpanKind, decision: Any) -> None:
    result = RootSampler().should_sample(None, 1, "span", kind)
    assert result.decision == decision


def test_a_message_carries_its_senders_trace_to_the_actor() -> None:
    broker = StubBroker()
    broker.add_middleware(TracePropagation())
    seen: list[int] = []
    done = threading.Event()

    @dramatiq.actor(broker=broker, actor_name="traced")
    def traced() -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)
        done.set()

    with tracer.start_as_current_span("sender") as sender:
        message = traced.send()
    assert message.options["trace_context"]["traceparent"].startswith("00-")
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        assert done.wait(5)
    finally:
        worker.stop()
    # the actor ran in the sender's trace (under a consumer span of its own)
    assert seen == [sender.get_span_context().trace_id]


def test_a_ratio_of_new_traces_is_recorded_and_their_children_with_them() -> None:
    sampler = RootSampler(0.25)
    decisions = [
        sampler.should_sample(None, trace_id, "GET", SpanKind.SERVER).decision
        for trace_id in range(1, 2**64, 2**64 // 4000)
    ]
    recorded = decisions.count(Decision.RECORD_AND_SAMPLE) / len(decisions)
    assert 0.2 < recorded < 0.3
    assert RootSampler(0.0).should_sample(None, 7, "GET", SpanKind.SERVER).decision == Decision.DROP


def test_the_tracing_setting_is_a_switch() -> None:
    assert Settings.from_env({}).tracing is True
    assert Settings.from_env({"PIXEVO_TRACING": "off"}).tracing is False
    with pytest.raises(SettingsError, match="PIXEVO_TRACING"):
        Settings.from_env({"PIXEVO_TRACING": "sometimes"})
    assert Settings.from_env({"PIXEVO_TRACE_SAMPLE_RATIO": "0.1"}).trace_sample_ratio == 0.1
    with pytest.raises(SettingsError, match="PIXEVO_TRACE_SAMPLE_RATIO"):
        Settings.from_env({"PIXEVO_TRACE_SAMPLE_RATIO": "2"})
    with pytest.raises(SettingsError, match="PIXEVO_OTLP_ENDPOINT"):
        Settings.from_env({"PIXEVO_OTLP_ENDPOINT": "collector:4318"})
