"""Group commit: concurrent saves share one transaction.

Every append to an application's table takes the library's table lock and a commit; under many
concurrent requests those dominate. A caller hands its aggregates' new events to the committer
thread and waits; the committer saves everything pending in one ``save()`` (one lock, one
commit). If that batch is refused (one item conflicts), each item is saved on its own, so one
caller's conflict is reported to that caller only and the others still succeed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from eventsourcing.persistence import IntegrityError

from application import tracing

Save = Callable[..., Any]


class GroupCommit:
    def __init__(self, save: Save, max_batch: int = 100) -> None:
        self._save = save
        self._max_batch = max_batch
        self._pending: list[tuple[Sequence[Any], Future[None]]] = []
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def save(self, *aggregates: Any) -> None:
        """Saves with whatever else is pending; raises what saving these alone would raise."""
        # Their events, taken now: a refused batch is saved again item by item, and an
        # aggregate's pending events are gone once any save has collected them.
        events = [e for a in aggregates if a is not None for e in a.collect_events()]
        # the caller's trace, stamped here: the committer thread saves under no span of its own
        tracing.stamp(events)
        done: Future[None] = Future()
        with tracing.span("eventstore.save", attributes={"pixevo.group_commit": True}):
            with self._ready:
                self._pending.append((events, done))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="group-commit", daemon=True
                    )
                    self._thread.start()
                self._ready.notify()
            done.result()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
            self._commit(batch)

    def _commit(self, batch: list[tuple[Sequence[Any], Future[None]]]) -> None:
        if len(batch) > 1:
            try:
                self._save(*(event for events, _ in batch for event in events))
            except IntegrityError:
                pass  # someone's conflict: save each alone below, so only they hear of it
            except Exception as error:  # noqa: BLE001 - handed to every waiting caller
                for _, done in batch:
                    done.set_exception(error)
                return
            else:
                for _, done in batch:
                    done.set_result(None)
                return
        for events, done in batch:
            try:
                self._save(*events)
            except Exception as error:  # noqa: BLE001 - handed to the caller
                done.set_exception(error)
            else:
                done.set_result(None)
