"""What every Pixevo application shares.

* Configuration comes only from the ``env`` the composition root passes in: unlike the library's
  default, the process environment is not consulted, so settings are read in one place.
* The recorder is a *process* recorder with multi-row tracking, so any application can record the
  events it makes in reaction to another application's event together with a tracking record of
  that event, in one transaction: a redelivered message finds the tracking record and does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar, cast, runtime_checkable
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import (
    IntegrityError,
    Notification,
    ProcessRecorder,
    Recording,
    Tracking,
)
from eventsourcing.utils import Environment

from application import tracing
from application.retry import retry_on_conflict

A = TypeVar("A", bound=Aggregate)

#: Advisory lock held while a process creates tables: PostgreSQL's DDL is not safe to race
#: (several processes starting at once fail with "tuple concurrently updated").
DDL_LOCK = 0x5049_5846


@runtime_checkable
class ExactTracking(Protocol):
    """A recorder that can tell whether one particular notification was processed."""

    def has_processed(self, application_name: str, notification_id: int) -> bool: ...


T = TypeVar("T")


class PixevoApplication(Application[UUID]):
    def construct_env(self, name: str, env: Mapping[str, str] | None = None) -> Environment:
        merged: dict[str, str] = dict(type(self).env)
        if type(self).is_snapshotting_enabled or type(self).snapshotting_intervals:
            merged["IS_SNAPSHOTTING_ENABLED"] = "y"
        merged.update(env or {})
        return Environment(name, merged)

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    @property
    def process_recorder(self) -> ProcessRecorder:
        return cast("ProcessRecorder", self.recorder)

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        """Records the events, each carrying the trace it was made in (see
        :mod:`application.tracing`), in a span of the save when there is a trace to be in."""
        tracing.stamp(processing_event.events)
        if not tracing.in_trace():
            return super()._record(processing_event)
        with tracing.span(
            "eventstore.save",
            attributes={
                "pixevo.application": self.name,
                "pixevo.events": len(processing_event.events),
            },
        ):
            return super()._record(processing_event)

    def load(self, aggregate_id: UUID, kind: type[A]) -> A:
        aggregate: object = self.repository.get(aggregate_id)
        if not isinstance(aggregate, kind):
            raise TypeError(
                f"{aggregate_id} is a {type(aggregate).__name__}, not a {kind.__name__}"
            )
        return aggregate

    def decode(self, notification: Notification) -> DomainEventProtocol[UUID]:
        return self.mapper.to_domain_event(notification)

    def save_tracked(self, tracking: Tracking, *aggregates: Aggregate) -> bool:
        """Saves the aggregates' new events with ``tracking``, atomically.

        ``False`` when the tracked event was processed before (nothing recorded this time);
        an optimistic-concurrency conflict is re-raised for :func:`retry_on_conflict`.
        """
        processing = ProcessingEvent[UUID](tracking)
        processing.collect_events(*aggregates)
        try:
            recordings = self._record(processing)
        except IntegrityError:
            if self.already_processed(tracking):
                return False
            raise
        self._take_snapshots(processing)
        self._notify(recordings)
        return True

    def already_processed(self, tracking: Tracking) -> bool:
        recorder = self.recorder
        if isinstance(recorder, ExactTracking):
            return recorder.has_processed(tracking.application_name, tracking.notification_id)
        # in-memory recorders (unit tests) process in order, where "at or beyond" is exact
        return self.process_recorder.has_tracking_id(
            tracking.application_name, tracking.notification_id
        )


def command(method: Callable[..., T]) -> Callable[..., T]:
    """Marks an application method as a command: re-run on an optimistic-concurrency conflict."""
    return retry_on_conflict(method)
