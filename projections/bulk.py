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

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from eventsourcing.persistence import Tracking
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from application.logs import decoder, read_after
from projections.base import NotifiedEvent, ProjectionView, month_of, timestamped
from projections.runner import Notified, ProjectionRunner

#: Keyed rows held in memory before a segment is written and they are forgotten; also how many
#: added rows are buffered before they are copied.
MAX_ROWS = 200_000
#: Notifications read per query.
PAGE = 5_000

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
        months = {month_of(row[at]) for row in rows} - {m for t, m in self.months if t == table}
        self.view.ensure_partitions(curs, table, sorted(months))
        self.months.update((table, month) for month in months)


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
    touches are then loaded from them first.
    """
    view = runner.view
    if not isinstance(view, Bulk):
        raise TypeError(f"{type(view).__qualname__} cannot be built in bulk")
    runner.start()
    decode = decoder(runner.mapper)
    writer = _Writer(view, view.bulk_columns)
    position = runner.position()
    stored = position > 0  # rows of the keys an event touches may be in the tables already
    while True:
        states: dict[UUID, Any] = {}
        loaded: set[UUID] = set()
        added: list[Row] = []
        start = position
        with view.datastore.transaction(commit=True) as curs:
            while len(states) <= max_rows:
                notifications, covered = read_after(
                    runner.upstream, position, page, view.topics, until
                )
                if covered == position:
                    break
                batch = [Notified(n.id, timestamped(decode(n))) for n in notifications]
                if stored:
                    missing = list({i.event.originator_id for i in batch} - states.keys())
                    found = view.bulk_load(curs, missing) if missing else {}
                    states.update(found)
                    loaded.update(found)
                added += view.bulk_fold(states, batch)
                if len(added) >= max_rows:
                    writer.copy(curs, added)
                    added = []
                position = covered
                if progress is not None:
                    progress(position)
            if position == start:
                return position
            writer.copy(curs, added)
            if loaded:
                view.bulk_forget(curs, list(loaded))
            writer.copy(curs, view.bulk_rows(states))
            view._insert_tracking(curs, Tracking(view.upstream, position))
            view.bulk_written(curs, position)
        stored = True


__all__ = ["MAX_ROWS", "PAGE", "Bulk", "Row", "build"]
