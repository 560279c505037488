"""Building a projection's fresh tables at bulk speed: what a rebuild does before it swaps in.

The live path (:mod:`projections.runner`) writes each batch in a transaction of its own: it
loads the rows the batch touches, folds the events into them and upserts them, a few round
trips per batch. A rebuild fills a fresh schema that nobody reads until it is swapped in, so a
:class:`Bulk` view is built otherwise: its rows are kept in memory, keyed by the events'
originator, every event is folded into them by the fold the live path uses, and they are
written with ``COPY``:

* rows that are only ever added (ledger entries, feed messages) are copied as they accumulate;
* keyed rows (a balance, a generation) are copied once, when their segment ends;
* a segment ends at the head, or once more than ``max_rows`` keyed rows are held (so memory
  stays bounded): its rows and the position it covered commit in one transaction, and its keyed
  rows are forgotten. An event of a forgotten row loads it back as the live path loads it, and
  the segment that loaded it deletes the stored rows of that key before it copies it again.

The tracked position and the rows therefore always agree, and whatever runs next (the rebuild's
last catch-up under the lock, then the live runner) continues from that position exactly once.
Events are decoded by :func:`application.logs.decoder`, the mapper's result at about twice its
speed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, Protocol, TypeVar, runtime_checkable
from uuid import UUID

import msgspec
from eventsourcing.persistence import Notification, Tracking
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier
from psycopg.types.json import set_json_dumps

from application.logs import read_after
from projections.base import NotifiedEvent, ProjectionView, month_of, timestamped
from projections.runner import Notified, ProjectionRunner

#: Keyed rows held in memory before a segment is written and they are forgotten.
MAX_ROWS = 200_000
#: Added rows buffered before they are copied (while the next ones are folded).
COPY_CHUNK = 5_000
#: Notifications read per query.
PAGE = 5_000

T = TypeVar("T")

#: A row for ``COPY``: the table it goes to, and its values in that table's column order.
Row = tuple[str, tuple[Any, ...]]


@runtime_checkable
class Bulk(Protocol):
    """What a view gives the builder, beyond being a :class:`ProjectionView`. Its state is a
    mapping from an event's ``originator_id`` to what the view keeps of that originator (a
    value the fold may also leave ``None``)."""

    @property
    def bulk_columns(self) -> Mapping[str, Sequence[str]]:
        """Each table the builder writes, and its columns in the order of the rows given."""

    def bulk_load(self, curs: Cursor[DictRow], keys: list[UUID]) -> dict[UUID, Any]:
        """The stored state of those of ``keys`` that have rows (as the live path loads it)."""

    def bulk_fold(self, states: dict[UUID, Any], batch: Sequence[NotifiedEvent]) -> list[Row]:
        """Folds the batch into ``states``, as the live path does; returns the rows it adds."""

    def bulk_rows(self, states: Mapping[UUID, Any]) -> Iterable[Row]:
        """The keyed rows of ``states``."""

    def bulk_forget(self, curs: Cursor[DictRow], keys: list[UUID]) -> None:
        """Deletes the keyed rows stored for ``keys`` (they are about to be copied again)."""

    def bulk_written(self, curs: Cursor[DictRow], position: int) -> None:
        """Runs in each segment's transaction, once its rows are written up to ``position``."""


class _Writer:
    """Copies rows into the view's tables, making the monthly partitions they need."""

    def __init__(self, view: ProjectionView, columns: Mapping[str, Sequence[str]]) -> None:
        self.view = view
        self.columns = columns
        self.months: set[tuple[str, datetime]] = set()

    def copy(self, curs: Cursor[DictRow], rows: Iterable[Row]) -> int:
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for table, values in rows:
            by_table.setdefault(table, []).append(values)
        for table, table_rows in by_table.items():
            self._partitions(curs, table, table_rows)
            columns = self.columns[table]
            statement = SQL("COPY {} ({}) FROM STDIN").format(
                self.view.table(table), SQL(", ").join(map(Identifier, columns))
            )
            with curs.copy(statement) as copy:
                for row in table_rows:
                    copy.write_row(row)
        return sum(len(table_rows) for table_rows in by_table.values())

    def _partitions(self, curs: Cursor[DictRow], table: str, rows: list[tuple[Any, ...]]) -> None:
        if table not in self.view.partitioned_tables:
            return
        at = list(self.columns[table]).index("created_at")
        times = {(row[at].year, row[at].month): row[at] for row in rows}  # one per month
        months = {month_of(t) for t in times.values()} - {m for t, m in self.months if t == table}
        self.view.ensure_partitions(curs, table, sorted(months))
        self.months.update((table, month) for month in months)


class _Writing:
    """One segment's transaction on the view's connection, run by a thread of its own: the jobs
    given run there in order, so that PostgreSQL takes in one chunk of rows while the caller
    decodes and folds the next. A job that fails rolls the segment back; so does :meth:`abort`.
    """

    def __init__(self, view: ProjectionView) -> None:
        self.view = view
        # bounded: a caller far ahead of the server waits rather than holding every chunk
        self.jobs: queue.Queue[tuple[Callable[[Cursor[DictRow]], Any], Future[Any]] | None]
        self.jobs = queue.Queue(maxsize=2)
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bulk-writing", daemon=True)
        self.thread.start()

    def submit(self, job: Callable[[Cursor[DictRow]], T]) -> Future[T]:
        future: Future[T] = Future()
        self.jobs.put((job, future))
        return future

    def commit(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.failed is not None:
            raise self.failed

    def abort(self) -> None:
        def fail(_: Cursor[DictRow]) -> None:
            raise _Aborted

        self.submit(fail)
        self.jobs.put(None)
        self.thread.join()

    def _run(self) -> None:
        future: Future[Any] | None = None
        try:
            with self.view.datastore.transaction(commit=True) as curs:
                set_json_dumps(_json_dumps, curs)
                while (item := self.jobs.get()) is not None:
                    job, future = item
                    future.set_result(job(curs))
                    future = None
        except BaseException as error:  # noqa: BLE001 (handed to the caller: commit() raises it)
            self.failed = error
            if future is not None:
                future.set_exception(error)
            while (item := self.jobs.get()) is not None:  # until the caller's last put
                item[1].set_exception(error)


class _Aborted(Exception):
    """Rolls a segment back (the caller failed)."""


def _json_dumps(value: Any) -> bytes:
    """JSON for ``jsonb`` columns: msgspec's (PostgreSQL parses it, so only the value counts)."""
    return msgspec.json.encode(value)


def build(
    runner: ProjectionRunner,
    until: int,
    progress: Callable[[int], None] | None = None,
    *,
    max_rows: int = MAX_ROWS,
    page: int = PAGE,
) -> int:
    """Builds ``runner``'s (fresh) tables up to ``until``; returns the position reached.

    Tables that already have rows (a position above 0) are continued: the keys an event
    touches are then loaded from them first. The next page of the log is read while the
    current one is folded (reading waits on the server, as writing does).
    """
    view = runner.view
    if not isinstance(view, Bulk):
        raise TypeError(f"{type(view).__qualname__} cannot be built in bulk")
    runner.start()
    position = runner.position()
    with ThreadPoolExecutor(1, thread_name_prefix="bulk-reading") as reading:
        builder = _Builder(view, runner, until, reading, page, progress)
        pages = builder.read(position)
        stored = position > 0  # rows of the keys an event touches may be in the tables
        while True:
            writing = _Writing(view)
            try:
                pages, reached = builder.segment(writing, pages, position, stored, max_rows)
            except BaseException:
                writing.abort()
                raise
            writing.commit()
            if reached == position:
                return position
            position, stored = reached, True


Page = Future[tuple[list[Notification], int]]


class _Builder:
    def __init__(
        self,
        view: Any,  # a ProjectionView that is Bulk
        runner: ProjectionRunner,
        until: int,
        reading: ThreadPoolExecutor,
        page: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.view = view
        self.upstream = runner.upstream
        self.until = until
        self.reading = reading
        self.page = page
        self.progress = progress
        self.decode = runner.decode
        self.writer = _Writer(view, view.bulk_columns)

    def read(self, after: int) -> Page:
        return self.reading.submit(
            read_after, self.upstream, after, self.page, self.view.topics, self.until
        )

    def segment(
        self, writing: _Writing, pages: Page, position: int, stored: bool, max_rows: int
    ) -> tuple[Page, int]:
        """Folds pages into memory until more than ``max_rows`` keyed rows are held or the log
        is read to ``until``, copying added rows as it goes, then writes the keyed rows and
        the position reached (on ``writing``, not yet committed). Returns the next page's
        read and that position."""
        view, start = self.view, position
        states: dict[UUID, Any] = {}
        loaded: set[UUID] = set()
        added: list[Row] = []
        while len(states) <= max_rows:
            notifications, covered = pages.result()
            if covered == position:
                break
            pages = self.read(covered)
            batch = [Notified(n.id, timestamped(self.decode(n))) for n in notifications]
            if stored:
                missing = list({i.event.originator_id for i in batch} - states.keys())
                if missing:
                    found = writing.submit(partial(view.bulk_load, keys=missing)).result()
                    states.update(found)
                    loaded.update(found)
            added += view.bulk_fold(states, batch)
            if len(added) >= COPY_CHUNK:
                writing.submit(partial(self.writer.copy, rows=added))
                added = []
            position = covered
            if self.progress is not None:
                self.progress(position)
        if position > start:
            writing.submit(
                partial(
                    self._finish,
                    forget=list(loaded),
                    rows=[*added, *view.bulk_rows(states)],
                    position=position,
                )
            )
        return pages, position

    def _finish(
        self, curs: Cursor[DictRow], forget: list[UUID], rows: list[Row], position: int
    ) -> None:
        if forget:
            self.view.bulk_forget(curs, forget)
        self.writer.copy(curs, rows)
        self.view._insert_tracking(curs, Tracking(self.view.upstream, position))
        self.view.bulk_written(curs, position)


__all__ = ["MAX_ROWS", "PAGE", "Bulk", "Row", "build"]
