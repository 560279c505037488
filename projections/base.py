"""What a projection is, to the runner that feeds it.

A projection lives in a schema of its own (``proj_<name>``) holding its read tables *and* its
tracking table, so a rebuild can build a complete fresh copy in another schema and swap the two
by renaming, in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from eventsourcing.domain import DomainEvent, DomainEventProtocol
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class NotifiedEvent(Protocol):
    """A decoded event with its position in the upstream notification log."""

    @property
    def notification_id(self) -> int: ...

    @property
    def event(self) -> DomainEvent: ...


def timestamped(event: DomainEventProtocol[Any]) -> DomainEvent:
    """The decoded event as what every event of our aggregates is: an eventsourcing
    :class:`~eventsourcing.domain.DomainEvent`, which has a ``timestamp`` (the protocol the
    mapper answers with does not promise one)."""
    if not isinstance(event, DomainEvent):
        raise TypeError(f"{type(event).__qualname__} is not a DomainEvent")
    return event


def month_of(at: datetime) -> datetime:
    """The first instant of ``at``'s month: the partition a row created at ``at`` is in."""
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class ProjectionView(PostgresTrackingRecorder):
    """A tracking recorder that also owns read tables (DDL from ``migrations/projections``)."""

    #: The projection's name; its schema is ``proj_<name>``.
    projection_name: ClassVar[str]
    #: Name of the application whose log it follows, and the topics it handles.
    upstream: ClassVar[str]
    topics: ClassVar[Sequence[str]]
    #: Tables range-partitioned by month on ``created_at``: partitions are made ahead at start.
    partitioned_tables: ClassVar[tuple[str, ...]] = ()
    #: Of those, the append-only ones whose old months may be dropped (``pixevo partitions
    #: ensure`` drops what ended before the retention): a live feed's history, which resuming
    #: a stream needs for days, not for ever.
    retained_tables: ClassVar[tuple[str, ...]] = ()
    months_ahead: ClassVar[int] = 3

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        kwargs.setdefault("tracking_table_name", f"{self.projection_name}_tracking")
        super().__init__(datastore, **kwargs)
        self.sql_create_statements.insert(
            0, SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(self.schema))
        )
        self.sql_create_statements.extend(self.table_statements())

    @classmethod
    def live_schema(cls) -> str:
        return f"proj_{cls.projection_name}"

    @property
    def schema(self) -> str:
        return self.datastore.schema

    def table(self, name: str) -> Composed:
        return SQL("{}.{}").format(Identifier(self.schema), Identifier(name))

    def table_statements(self) -> list[Composed]:
        """The projection's DDL: ``migrations/projections/<name>.sql`` in this view's schema."""
        ddl = (MIGRATIONS_DIR / "projections" / f"{self.projection_name}.sql").read_text()
        return [SQL(ddl).format(schema=Identifier(self.schema))]

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        """Writes what the batch changes, on the runner's cursor (inside its transaction)."""
        raise NotImplementedError

    def after_commit(self) -> None:
        """Runs after a batch's transaction committed (e.g. to publish what it wrote)."""

    def on_start(self, curs: Cursor[DictRow]) -> None:
        """Runs once when a runner starts: creates this month's and the next months' partitions."""
        for table in self.partitioned_tables:
            curs.execute(
                "SELECT public.pixevo_ensure_monthly_partitions(%s::regclass, 1, %s)",
                [f"{self.schema}.{table}", self.months_ahead],
            )

    # -- writing, for the views that write a batch with set-based statements ---------------

    def ensure_partitions(
        self, curs: Cursor[DictRow], table: str, times: Iterable[datetime]
    ) -> None:
        """Makes the monthly partitions of ``table`` that rows created at ``times`` fall in."""
        months = {t.replace(day=1, hour=0, minute=0, second=0, microsecond=0) for t in times}
        for month in sorted(months):
            curs.execute(
                "SELECT public.pixevo_ensure_partition(%s::regclass, %s)",
                [f"{self.schema}.{table}", month],
            )

    def write_rows(
        self,
        curs: Cursor[DictRow],
        table: str,
        columns: Mapping[str, tuple[str, Sequence[Any]]],
        *,
        key: str | None = None,
        newer: str = "version",
    ) -> None:
        """Writes rows given column by column (``name: (PostgreSQL type, values)``) in one
        statement. Without ``key``, a row already there is left as it is; with ``key`` (the
        conflict target), it is updated where ``newer`` is greater in the new row, so a
        replayed batch changes nothing."""
        names = list(columns)
        if not names or not columns[names[0]][1]:
            return
        arrays = ", ".join(f"%s::{kind}[]" for kind, _ in columns.values())
        conflict = "ON CONFLICT DO NOTHING"
        if key is not None:
            keys = {k.strip() for k in key.split(",")}
            updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in keys)
            conflict = (
                f"ON CONFLICT ({key}) DO UPDATE SET {updates} WHERE t.{newer} < excluded.{newer}"
            )
        curs.execute(
            f"INSERT INTO {self.schema}.{table} AS t ({', '.join(names)}) "
            f"SELECT * FROM unnest({arrays}) {conflict}",
            [list(values) for _, values in columns.values()],
        )
