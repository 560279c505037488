"""Runs a projection: follows the upstream notification log and writes its rows in batches.

Each batch is one transaction on the view's database: it takes the projection's advisory lock
(shared), re-reads the tracked position *inside* the transaction, reads the next notifications,
writes the rows and the new position, and commits. A kill at any instant loses nothing and
repeats nothing: the position and the rows commit together. A rebuild swaps in a fresh schema
under the exclusive form of the same lock, so a live runner simply continues from whatever
position the (new) tables record.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import ApplicationRecorder, Mapper, Tracking
from psycopg import Cursor
from psycopg.rows import DictRow

from application.base import DDL_LOCK
from application.logs import decoder, read_after
from projections.base import ProjectionView, timestamped

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Notified:
    notification_id: int
    event: DomainEvent


def lock_key(projection_name: str) -> int:
    return zlib.crc32(f"projection:{projection_name}".encode())


class ProjectionRunner:
    def __init__(
        self,
        view: ProjectionView,
        upstream: ApplicationRecorder,
        mapper: Mapper[Any],
        *,
        batch_size: int = 1000,
        database_url: str | None = None,
    ) -> None:
        self.view = view
        self.upstream = upstream
        self.mapper = mapper
        self.decode = decoder(mapper)  # the mapper's events, faster
        self.batch_size = batch_size
        self.database_url = database_url  # for LISTEN wake-ups; polling alone without it
        self.stopping = threading.Event()
        self._started = False

    @property
    def name(self) -> str:
        return self.view.projection_name

    def start(self) -> None:
        if not self._started:
            with self._ddl_session() as lock:
                lock.execute("SELECT pg_advisory_lock(%s)", [DDL_LOCK])  # DDL must not race
                try:
                    self.view.create_table()
                    with self.view.datastore.transaction(commit=True) as curs:
                        self.view.on_start(curs)
                finally:
                    lock.execute("SELECT pg_advisory_unlock(%s)", [DDL_LOCK])
            self._started = True

    def _ddl_session(self) -> contextlib.AbstractContextManager[Any]:
        """Where the DDL lock is held while the view's own connection makes its tables: a
        short-lived session of its own (the view's pool then needs one connection, not two
        kept for good), or the pool's second connection when there is no URL to open one."""
        if self.database_url:
            return psycopg.connect(self.database_url, autocommit=True)
        return self.view.datastore.get_connection()

    def position(self) -> int:
        return self.view.max_tracking_id(self.view.upstream) or 0

    def run_batch(self, until: int | None = None) -> int:
        """Projects the next batch; returns how many notifications it covered (0: caught up)."""
        self.start()
        with self.view.datastore.transaction(commit=True) as curs:
            curs.execute("SELECT pg_advisory_xact_lock_shared(%s)", [lock_key(self.name)])
            covered = self._batch(curs, until)
        if covered:
            self.view.after_commit()
        return covered

    def _batch(self, curs: Cursor[DictRow], until: int | None = None) -> int:
        position = self.view._max_tracking_id(self.view.upstream, curs) or 0
        notifications, covered = read_after(
            self.upstream, position, self.batch_size, self.view.topics, until
        )
        if covered == position:
            return 0
        batch = [Notified(n.id, timestamped(self.decode(n))) for n in notifications]
        if batch:
            self.view.project(curs, batch)
        self.view._insert_tracking(curs, Tracking(self.view.upstream, covered))
        return covered - position

    def catch_up(
        self, progress: Callable[[int], None] | None = None, until: int | None = None
    ) -> int:
        """Runs batches until the view has covered the log's head (or ``until``, for a reader
        that must finish while writers keep going); returns the final position."""
        while not self.stopping.is_set() and self.run_batch(until):
            if progress is not None:
                progress(self.position())
        return self.position()

    @property
    def channel(self) -> str | None:
        """Where the upstream's writers NOTIFY."""
        channel = getattr(self.upstream, "channel_name", None)
        return channel if isinstance(channel, str) else None

    def run_forever(self, poll_interval: float = 1.0, wakeups: Wakeups | None = None) -> None:
        """Catches up, then waits for the upstream's NOTIFY (or the poll interval) and repeats.
        ``wakeups``: a listener shared by the runners of one process (else one of its own)."""
        own = None
        if wakeups is None and self.channel and self.database_url:
            own = wakeups = Wakeups(self.database_url, [self.channel])
            own.start()
        woken = wakeups.event(self.channel) if wakeups is not None and self.channel else None
        try:
            while not self.stopping.is_set():
                if woken is not None:
                    woken.clear()  # before reading: a NOTIFY after this read wakes the next wait
                if self.run_batch():
                    continue
                if woken is not None:
                    woken.wait(poll_interval)
                else:
                    time.sleep(poll_interval)
        finally:
            if own is not None:
                own.stop()

    def stop(self) -> None:
        self.stopping.set()


class Wakeups:
    """One LISTEN connection for the runners of a process: a NOTIFY on a channel sets that
    channel's event, which its runners wait on (one connection per process, not per runner)."""

    def __init__(self, database_url: str, channels: list[str]) -> None:
        self.database_url = database_url
        self.events = {channel: threading.Event() for channel in channels}
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="projection-wakeups", daemon=True)

    def event(self, channel: str) -> threading.Event | None:
        return self.events.get(channel)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True) as conn:
                    for channel in self.events:
                        conn.execute(f'LISTEN "{channel}"')
                    while not self.stopping.is_set():
                        for notify in conn.notifies(timeout=1.0):
                            woken = self.events.get(notify.channel)
                            if woken is not None:
                                woken.set()
            except psycopg.OperationalError as error:  # the runners poll meanwhile
                log.warning("projection wake-ups lost: %s; listening again", error)
                self.stopping.wait(1.0)
