"""The dispatcher: the event store as an outbox, relayed to Dramatiq.

For one application it reads the notification log after its tracked position, enqueues one
message per (reaction, notification) for the reactions subscribed to that event's topic, then
records how far it got. Positions live in PostgreSQL (``reactions.dispatch_positions``);
LISTEN/NOTIFY only wakes it early. If Redis is down, enqueuing fails, the position does not
move, and the dispatcher retries with backoff: nothing is lost. A crash between enqueuing and
recording the position re-sends part of a batch; reactions record effects with tracking, so
a re-sent message changes nothing downstream. One dispatcher per application is active at a
time (a session advisory lock); others wait as hot standbys.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping

import psycopg
import structlog
from dramatiq.errors import BrokerError
from eventsourcing.persistence import ApplicationRecorder
from opentelemetry import propagate, trace
from redis.exceptions import RedisError

from application.logs import read_after
from application.tracing import traceparent_in, tracer
from infrastructure.postgres import become_leader

Enqueue = Callable[[str, str, int], None]
log = structlog.get_logger(__name__)


class Dispatcher:
    def __init__(
        self,
        database_url: str,
        application_name: str,
        recorder: ApplicationRecorder,
        subscriptions: Mapping[str, tuple[str, ...]],
        enqueue: Enqueue,
        *,
        batch_size: int = 200,
        log_key: str | None = None,
    ) -> None:
        """``log_key``: the name under which an event's originator id is bound while its
        messages are sent (``generation_id``): it travels with them (see ``LogContext``)."""
        self.database_url = database_url
        self.application_name = application_name
        self.recorder = recorder
        self.subscriptions = dict(subscriptions)
        self.enqueue = enqueue
        self.batch_size = batch_size
        self.log_key = log_key
        self.stopping = threading.Event()
        self._topics = sorted({t for topics in self.subscriptions.values() for t in topics})
        self._conn: psycopg.Connection[tuple[int]] | None = None

    @property
    def conn(self) -> psycopg.Connection[tuple[int]]:
        """The dispatcher's own session (autocommit): its position and its leadership lock."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def position(self) -> int:
        row = self.conn.execute(
            "SELECT notification_id FROM reactions.dispatch_positions WHERE application_name = %s",
            [self.application_name],
        ).fetchone()
        return int(row[0]) if row else 0

    def dispatch_batch(self) -> int:
        """Enqueues the next batch and records the new position; returns how far it moved."""
        position = self.position()
        notifications, covered = read_after(self.recorder, position, self.batch_size, self._topics)
        for notification in notifications:
            ids = {self.log_key: str(notification.originator_id)} if self.log_key else {}
            reactions = [
                r for r, topics in self.subscriptions.items() if notification.topic in topics
            ]
            if not reactions:
                continue
            # the event's own trace goes on in the messages (see TracePropagation)
            stamped = traceparent_in(notification.state)
            parent = propagate.extract({"traceparent": stamped}) if stamped else None
            with (
                structlog.contextvars.bound_contextvars(**ids),
                tracer.start_as_current_span(
                    f"dispatch {self.application_name}",
                    context=parent,
                    kind=trace.SpanKind.PRODUCER,
                    attributes={"pixevo.notification_id": notification.id},
                ),
            ):
                for reaction in reactions:
                    self.enqueue(reaction, self.application_name, notification.id)
                    log.debug("dispatcher.sent", reaction=reaction, position=notification.id)
        if covered > position:
            self.conn.execute(
                "INSERT INTO reactions.dispatch_positions (application_name, notification_id) "
                "VALUES (%s, %s) ON CONFLICT (application_name) DO UPDATE SET "
                "notification_id = GREATEST(reactions.dispatch_positions.notification_id, "
                "excluded.notification_id), updated_at = now()",
                [self.application_name, covered],
            )
        return covered - position

    def run_forever(self, poll_interval: float = 1.0, max_backoff: float = 30.0) -> None:
        if not self.subscriptions:
            log.info("dispatcher.idle", application=self.application_name, reason="no reactions")
            self.stopping.wait()
            return
        channel = getattr(self.recorder, "channel_name", self.application_name)
        with self.conn as conn:
            self._become_leader(conn)
            conn.execute(f'LISTEN "{channel}"')
            backoff = 0.5
            while not self.stopping.is_set():
                try:
                    moved = self.dispatch_batch()
                    backoff = 0.5
                except (
                    RedisError,
                    BrokerError,
                    OSError,
                ) as error:  # Redis down: retry, lose nothing
                    log.warning("dispatcher.enqueue_failed", error=str(error), retry_in=backoff)
                    self.stopping.wait(backoff)
                    backoff = min(max_backoff, backoff * 2)
                    continue
                if not moved:
                    for _ in conn.notifies(timeout=poll_interval, stop_after=1):
                        pass

    def _become_leader(self, conn: psycopg.Connection[tuple[int]]) -> None:
        key = zlib.crc32(f"dispatcher:{self.application_name}".encode())
        become_leader(conn, key, self.stopping)

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
