"""The scheduler: sends parked messages again, admits capped generations, sweeps deadlines.

One scheduler is active at a time (a session advisory lock; others wait as hot standbys), in
the dispatcher's process. Each round it

* sends every parked ``deferred`` message that is due (enqueue first, forget after: a duplicate
  is harmless, reactions record their effects with tracking);
* for each user with ``capped`` messages, reserves free slots for the oldest and sends them;
* every ``sweep_every_s``, ends generations past their deadline and frees the slots of
  generations that have finished (a worker that died holding one, say).

It wakes on ``NOTIFY`` (something parked, a slot released) or after ``poll_s``. If Redis is
down, sending fails, nothing is forgotten, and the round is tried again with backoff.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from dramatiq.errors import BrokerError
from redis.exceptions import RedisError

from infrastructure.parking import WAKE_CHANNEL, Parked, Parking, ProviderSlots, user_lock
from infrastructure.postgres import become_leader

Enqueue = Callable[[str, str, int], None]
#: Ends overdue generations and frees finished ones' slots; answers how many it changed.
Sweep = Callable[[], int]
log = structlog.get_logger(__name__)
LEADER_LOCK = zlib.crc32(b"scheduler")


class Scheduler:
    def __init__(
        self,
        database_url: str,
        parking: Parking,
        slots: ProviderSlots,
        enqueue: Enqueue,
        sweep: Sweep | None = None,
        *,
        batch_size: int = 200,
        sweep_every_s: float = 5.0,
        poll_s: float = 1.0,
    ) -> None:
        self.database_url = database_url
        self.parking, self.slots, self.enqueue, self.sweep = parking, slots, enqueue, sweep
        self.batch_size, self.sweep_every_s, self.poll_s = batch_size, sweep_every_s, poll_s
        self.stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._swept_at = 0.0

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def run_round(self) -> int:
        """One round; how many messages it sent (and generations it swept)."""
        sent = self.resume_due() + self.admit()
        if self.sweep is not None and time.monotonic() - self._swept_at >= self.sweep_every_s:
            self._swept_at = time.monotonic()
            sent += self.sweep()
        return sent

    def resume_due(self) -> int:
        due = self.parking.due(self.conn, self.batch_size)
        for parked in due:
            self._send(parked, "scheduler.resumed")
            self.parking.unpark(self.conn, parked)
        return len(due)

    def admit(self) -> int:
        admitted = 0
        for user_id in self.parking.waiting_users(self.conn):
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", [user_lock(user_id)])
                free = self.slots.free(self.conn, user_id)
                for parked in self.parking.next_in_line(self.conn, user_id, free):
                    if parked.generation_id is not None:
                        self.slots.reserve(self.conn, user_id, parked.generation_id)
                    self._send(parked, "scheduler.admitted")
                    self.parking.unpark(self.conn, parked)
                    admitted += 1
        return admitted

    def _send(self, parked: Parked, event: str) -> None:
        ids = {"generation_id": str(parked.generation_id)} if parked.generation_id else {}
        with structlog.contextvars.bound_contextvars(**ids):
            self.enqueue(parked.reaction, parked.upstream, parked.notification_id)
            log.info(event, reaction=parked.reaction, notification_id=parked.notification_id)

    def run_forever(self, max_backoff: float = 30.0) -> None:
        with self.conn as conn:
            self._become_leader(conn)
            conn.execute(f'LISTEN "{WAKE_CHANNEL}"')
            backoff = 0.5
            while not self.stopping.is_set():
                try:
                    sent = self.run_round()
                    backoff = 0.5
                except (RedisError, BrokerError, OSError) as error:  # Redis down: keep it all
                    log.warning("scheduler.send_failed", error=str(error), retry_in=backoff)
                    self.stopping.wait(backoff)
                    backoff = min(max_backoff, backoff * 2)
                    continue
                if not sent:
                    for _ in conn.notifies(timeout=self.poll_s, stop_after=1):
                        pass

    def _become_leader(self, conn: psycopg.Connection[Any]) -> None:
        become_leader(conn, LEADER_LOCK, self.stopping)

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
