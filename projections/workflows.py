"""The workflows projection: templates, versions and one row per run (monthly partitions).

A run's row keeps its state as :func:`domain.workflow.fold` has it (encoded so it decodes to
the same values), so each batch folds the new events into the stored state: the read model
tells the run's story with the aggregate's own ``apply`` methods, and the document the API
serves is :func:`application.workflow_views.run_document` of it.

Each change to a run is also a live message (``workflow_run.status``, or at the end
``workflow_run.<status>`` carrying the whole run), stored in the ``feed`` table with the rows
and published to the run's and its user's Redis channels after commit, like generations'.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import msgspec
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from application.live import LiveMessage
from application.logs import topic_of
from application.workflow_views import node_view, progress, run_document
from domain.workflow import (
    RUN_TERMINAL,
    WorkflowExecution,
    WorkflowTemplate,
    fold,
    next_deadline,
)
from projections.base import NotifiedEvent, month_of
from projections.feed import FeedView

#: Live message types: a change, and (ending the run's stream) one per terminal status.
STATUS_TYPE = "workflow_run.status"
FINAL_TYPES: frozenset[str] = frozenset(f"workflow_run.{s}" for s in RUN_TERMINAL)
NODE_PROGRESS_TYPE = "node_progress"

RUN_COLUMNS = (
    "id",
    "created_at",
    "user_id",
    "workflow_id",
    "version",
    "status",
    "state",
    "doc",
    "deadline",
    "updated_at",
    "event_version",
    "position",
)

_RUN_EVENTS = (
    WorkflowExecution.Requested,
    WorkflowExecution.Funded,
    WorkflowExecution.FundingRefused,
    WorkflowExecution.NodeQueued,
    WorkflowExecution.LocalNodeQueued,
    WorkflowExecution.NodeStarted,
    WorkflowExecution.NodeCompleted,
    WorkflowExecution.NodeFailed,
    WorkflowExecution.NodesSkipped,
    WorkflowExecution.NodesCancelled,
    WorkflowExecution.CancelRequested,
    WorkflowExecution.Retried,
    WorkflowExecution.Ended,
)


# -- the run's state, as JSON that decodes to the same values ---------------------------------


def encode_value(value: Any) -> Any:
    """``value`` as JSON, datetimes and UUIDs tagged (``{"$dt": ...}``, ``{"$uuid": ...}``)."""
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, UUID):
        return {"$uuid": str(value)}
    if isinstance(value, dict):
        return {str(k): encode_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and "$dt" in value:
            return datetime.fromisoformat(value["$dt"])
        if len(value) == 1 and "$uuid" in value:
            return UUID(value["$uuid"])
        return {k: decode_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    return value


def encode_state(state: SimpleNamespace) -> dict[str, Any]:
    encoded: dict[str, Any] = encode_value(vars(state))
    return encoded


def decode_state(data: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(**decode_value(data))


def deadline_of(state: Any) -> datetime | None:
    """When the sweeper should look at the run (see :func:`domain.workflow.next_deadline`)."""
    return next_deadline(state)


def changed_nodes(state: Any, event: Any) -> list[str]:
    """The nodes ``event`` changed (every node for the run's first event)."""
    if isinstance(event, WorkflowExecution.Requested):
        return list(state.nodes)
    node = getattr(event, "node", None)
    if isinstance(event, WorkflowExecution.Retried):
        return list(event.nodes)
    if node is not None:
        return [node]
    return list(getattr(event, "nodes", ()))


def feed_entry(state: Any, event: Any) -> tuple[str, dict[str, Any]]:
    """(type, data) of the live message for ``event``, given the run after it: the whole run
    when it ends, else what changed (a run's document is made once a batch, not per event)."""
    if isinstance(event, WorkflowExecution.Ended):
        return f"workflow_run.{state.status}", document(state)
    return STATUS_TYPE, {
        "run_id": str(state.id),
        "status": state.status,
        "progress": progress(state),
        "nodes": [node_view(state, node) for node in changed_nodes(state, event)],
        "at": event.timestamp.isoformat(),
    }


def document(state: Any) -> dict[str, Any]:
    return dict(msgspec.to_builtins(run_document(state)))


def _json(value: Any) -> Jsonb:
    return Jsonb(msgspec.to_builtins(value))


class WorkflowsView(FeedView):
    projection_name = "workflows"
    upstream = "workflows"
    topics = tuple(
        topic_of(cls)
        for cls in (
            WorkflowTemplate.Created,
            WorkflowTemplate.VersionAdded,
            WorkflowTemplate.SourceMoved,
            *_RUN_EVENTS,
        )
    )
    partitioned_tables = ("workflow_runs", "feed")
    feed_subject = "run_id"

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        self._templates(curs, batch)
        runs = [item for item in batch if isinstance(item.event, _RUN_EVENTS)]
        ids = list({item.event.originator_id for item in runs})
        rows: dict[UUID, dict[str, Any]] = {}
        if ids:
            curs.execute(
                f"SELECT id, created_at, state, event_version FROM {self.schema}.workflow_runs "
                "WHERE id = ANY(%s)",
                [ids],
            )
            for row in curs:
                rows[row["id"]] = {
                    "state": decode_state(row["state"]),
                    "event_version": row["event_version"],
                }
        feed: list[tuple[datetime, LiveMessage]] = []
        touched: dict[UUID, dict[str, Any]] = {}
        for item in runs:
            event: Any = item.event
            key = event.originator_id
            known = rows.get(key)
            if known is None and not isinstance(event, WorkflowExecution.Requested):
                continue  # an event of a run not seen: nothing to fold it into
            if known is not None and event.originator_version <= known["event_version"]:
                continue
            state = fold(known["state"] if known else None, event)
            rows[key] = touched[key] = {
                "state": state,
                "event_version": event.originator_version,
                "position": item.notification_id,
                "updated_at": event.timestamp,
            }
            kind, data = feed_entry(state, event)
            feed.append(
                (
                    event.timestamp,
                    LiveMessage(
                        type=kind,
                        run_id=key,
                        user_id=state.user_id,
                        data=data,
                        position=item.notification_id,
                    ),
                )
            )
        months = {("workflow_runs", month_of(r["state"].created_on)) for r in touched.values()}
        months |= {("feed", month_of(at)) for at, _ in feed}
        for table, month in sorted(months):
            curs.execute(
                "SELECT public.pixevo_ensure_partition(%s::regclass, %s)",
                [f"{self.schema}.{table}", month],
            )
        for row in touched.values():  # each run's document once, as the batch left it
            row["doc"] = document(row["state"])
        if touched:
            self._upsert(curs, list(touched.values()))
        self._write_feed(curs, feed)

    def _templates(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        for item in batch:
            event: Any = item.event
            if isinstance(event, WorkflowTemplate.Created):
                curs.execute(
                    f"INSERT INTO {self.schema}.workflow_templates (id, owner_id, name, "
                    "description, latest_version, source, created_at, updated_at) "
                    "VALUES (%s, %s, %s, %s, NULL, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                    [
                        event.originator_id,
                        event.owner_id,
                        event.name,
                        event.description,
                        _json(event.source) if event.source is not None else None,
                        event.timestamp,
                        event.timestamp,
                    ],
                )
            elif isinstance(event, WorkflowTemplate.VersionAdded):
                curs.execute(
                    f"INSERT INTO {self.schema}.workflow_versions (workflow_id, version, graph, "
                    "created_at) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [event.originator_id, event.version, _json(event.graph), event.timestamp],
                )
                curs.execute(
                    f"UPDATE {self.schema}.workflow_templates SET "
                    "latest_version = greatest(coalesce(latest_version, 0), %s), "
                    "updated_at = %s WHERE id = %s",
                    [event.version, event.timestamp, event.originator_id],
                )
            elif isinstance(event, WorkflowTemplate.SourceMoved):
                curs.execute(
                    f"UPDATE {self.schema}.workflow_templates SET source = %s, updated_at = %s "
                    "WHERE id = %s",
                    [_json(event.source), event.timestamp, event.originator_id],
                )

    def _upsert(self, curs: Cursor[DictRow], rows: list[dict[str, Any]]) -> None:
        names = ", ".join(RUN_COLUMNS)
        placeholders = ", ".join(["%s"] * len(RUN_COLUMNS))
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in RUN_COLUMNS if c not in ("id", "created_at")
        )
        values = []
        for row in rows:
            state = row["state"]
            values.append(
                [
                    state.id,
                    state.created_on,
                    state.user_id,
                    state.workflow_id,
                    state.workflow_version,
                    state.status,
                    Jsonb(encode_state(state)),
                    Jsonb(row["doc"]),
                    deadline_of(state),
                    row["updated_at"],
                    row["event_version"],
                    row["position"],
                ]
            )
        curs.executemany(
            f"INSERT INTO {self.schema}.workflow_runs AS r ({names}) VALUES ({placeholders}) "
            f"ON CONFLICT (id, created_at) DO UPDATE SET {updates} "
            "WHERE r.event_version < excluded.event_version",
            values,
        )

    # -- the live feed (as the generations projection's) ------------------------------------
