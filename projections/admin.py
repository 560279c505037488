"""Operator tools for projections: where each one stands, and rebuilding one without downtime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg.sql import SQL, Identifier

from projections import bulk
from projections.base import timestamped
from projections.runner import ProjectionRunner, lock_key


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    name: str
    upstream: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float


def status(runner: ProjectionRunner) -> ProjectionStatus:
    """Position, head of the upstream log, and lag in events and in seconds.

    The lag in events counts the unprocessed notifications the projection subscribes to (ids
    have gaps, so a subtraction would not do); the lag in seconds is the age of the oldest one.
    """
    view, upstream = runner.view, runner.upstream
    runner.start()
    position = runner.position()
    head = upstream.max_notification_id() or 0
    pending = upstream.select_notifications(
        position, 1, topics=list(view.topics), inclusive_of_start=False
    )
    lag_seconds = 0.0
    lag_events = 0
    if pending:
        oldest = timestamped(runner.mapper.to_domain_event(pending[0]))
        lag_seconds = max(0.0, (datetime.now(UTC) - oldest.timestamp).total_seconds())
        lag_events = _count_after(runner, position)
    return ProjectionStatus(
        view.projection_name, view.upstream, position, head, lag_events, lag_seconds
    )


def _count_after(runner: ProjectionRunner, position: int) -> int:
    upstream = runner.upstream
    table = SQL("{}.{}").format(
        Identifier(upstream.datastore.schema),  # type: ignore[attr-defined]
        Identifier(upstream.events_table_name),  # type: ignore[attr-defined]
    )
    with upstream.datastore.transaction(commit=False) as curs:  # type: ignore[attr-defined]
        curs.execute(
            SQL(
                "SELECT count(*) AS n FROM {} WHERE notification_id > %s AND topic = ANY(%s)"
            ).format(table),
            [position, list(runner.view.topics)],
        )
        row = curs.fetchone()
    return int(row["n"]) if row else 0


def rebuild(
    live: ProjectionRunner,
    fresh: ProjectionRunner,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Rebuilds ``live``'s tables from the event store and swaps them in.

    ``fresh`` is a runner of the same projection on an empty scratch schema. It catches up to the
    head as it was when the rebuild began while the live tables keep serving (in bulk, with
    :func:`projections.bulk.build`, for the views that can be built so); then, holding the
    projection's lock exclusively (a live runner waits for it between batches), it catches up the
    last events and the schemas swap by renaming, in one transaction. Returns the position the
    rebuilt tables start from.
    """
    live_schema, scratch = live.view.schema, fresh.view.schema
    with fresh.view.datastore.transaction(commit=True) as curs:
        curs.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(scratch)))
    fresh.start()
    head = fresh.upstream.max_notification_id() or 0

    # Both phases stop at a head read once: with writers busy, chasing the moving head could
    # last for ever. What lands after the swap is the live runner's, from the swapped-in position.
    def report(position: int) -> None:
        if progress is not None:
            progress(position, head)

    if isinstance(fresh.view, bulk.Bulk):  # nobody reads the fresh tables: fold, then COPY
        bulk.build(fresh, head, report)
    else:
        fresh.catch_up(report, until=head)
    retired = f"{live_schema}_retired"
    with live.view.datastore.transaction(commit=True) as curs:
        curs.execute("SELECT pg_advisory_xact_lock(%s)", [lock_key(live.name)])
        last = fresh.upstream.max_notification_id() or 0
        while fresh._batch(curs, until=last):
            pass
        curs.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(retired)))
        curs.execute(
            SQL("ALTER SCHEMA {} RENAME TO {}").format(Identifier(live_schema), Identifier(retired))
        )
        curs.execute(
            SQL("ALTER SCHEMA {} RENAME TO {}").format(Identifier(scratch), Identifier(live_schema))
        )
        curs.execute(SQL("DROP SCHEMA {} CASCADE").format(Identifier(retired)))
    return live.position()


__all__ = ["ProjectionStatus", "rebuild", "status"]
