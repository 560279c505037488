"""The generations projection: one row per generation, in monthly partitions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from application.logs import topic_of
from domain.credits import to_credits
from domain.generation import Generation
from projections.base import NotifiedEvent, ProjectionView

COLUMNS = (
    "id",
    "created_at",
    "user_id",
    "model_key",
    "requested_model",
    "provider",
    "status",
    "prompt",
    "negative_prompt",
    "params",
    "output_format",
    "fingerprint",
    "result_metadata",
    "error",
    "generation_time_ms",
    "cost_credits",
    "charged_credits",
    "fallback_from",
    "notice",
    "served_from_cache",
    "completed_at",
    "updated_at",
    "version",
)
_JSON = ("params", "result_metadata", "error")


def apply(row: dict[str, Any] | None, event: Any) -> dict[str, Any] | None:
    """The row after ``event`` (``None`` for an event of a generation not yet seen)."""
    if isinstance(event, Generation.Requested):
        return {
            "id": event.originator_id,
            "created_at": event.timestamp,
            "user_id": event.user_id,
            "model_key": event.model,
            "requested_model": event.model,
            "provider": event.provider,
            "status": "requested",
            "prompt": event.prompt,
            "negative_prompt": event.negative_prompt,
            "params": event.params,
            "output_format": event.output_format,
            "fingerprint": event.fingerprint,
            "result_metadata": None,
            "error": None,
            "generation_time_ms": None,
            "cost_credits": to_credits(event.quote),
            "charged_credits": None,
            "fallback_from": None,
            "notice": None,
            "served_from_cache": False,
            "completed_at": None,
            "updated_at": event.timestamp,
            "version": event.originator_version,
        }
    if row is None or event.originator_version <= row["version"]:
        return row
    row = {**row, "updated_at": event.timestamp, "version": event.originator_version}
    if isinstance(event, Generation.Funded):
        row["status"] = "funded"
    elif isinstance(event, Generation.Queued):
        row.update(status="queued", model_key=event.model, provider=event.provider)
    elif isinstance(event, Generation.FellBack):
        row.update(
            model_key=event.to_model,
            provider=event.provider,
            fallback_from=row["fallback_from"] or event.from_model,
        )
    elif isinstance(event, Generation.Deferred):
        row["notice"] = f"taking longer than usual: {event.reason}; it will resume by itself"
    elif isinstance(event, Generation.Submitted):
        row.update(status="running", notice=None)
    elif isinstance(event, Generation.Produced):
        row.update(
            status="processing",
            result_metadata={
                "storage_key": event.storage_key,
                "width": event.width,
                "height": event.height,
                "content_type": event.content_type,
                "bytes": event.size_bytes,
            },
        )
    elif isinstance(event, Generation.Completed):
        row.update(
            status="completed",
            charged_credits=to_credits(event.charged),
            completed_at=event.timestamp,
            served_from_cache=event.from_cache is not None,
            generation_time_ms=_ms(row["created_at"], event.timestamp),
        )
    elif isinstance(event, Generation.Failed):
        row.update(
            status="failed",
            error={"code": event.code, "message": event.message},
            completed_at=event.timestamp,
            charged_credits=to_credits(0),
        )
    elif isinstance(event, Generation.Cancelled):
        row.update(status="cancelled", completed_at=event.timestamp, charged_credits=to_credits(0))
    return row


def _ms(start: datetime, end: datetime) -> int:
    return int((end - start).total_seconds() * 1000)


class GenerationsView(ProjectionView):
    projection_name = "generations"
    upstream = "generations"
    topics = tuple(
        topic_of(cls)
        for cls in (
            Generation.Requested,
            Generation.Funded,
            Generation.Queued,
            Generation.FellBack,
            Generation.Deferred,
            Generation.Submitted,
            Generation.Produced,
            Generation.Completed,
            Generation.Failed,
            Generation.Cancelled,
        )
    )
    partitioned_tables = ("generations",)

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        ids = list({item.event.originator_id for item in batch})
        curs.execute(f"SELECT * FROM {self.schema}.generations WHERE id = ANY(%s)", [ids])
        rows: dict[UUID, dict[str, Any] | None] = {row["id"]: dict(row) for row in curs}
        touched: set[UUID] = set()
        for item in batch:
            key = item.event.originator_id
            rows[key] = apply(rows.get(key), item.event)
            touched.add(key)
        changed = [row for key in touched if (row := rows.get(key)) is not None]
        for month in {
            row["created_at"].replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            for row in changed
        }:
            curs.execute(
                "SELECT public.pixevo_ensure_partition(%s::regclass, %s)",
                [f"{self.schema}.generations", month],
            )
        if changed:
            self._upsert(curs, changed)

    def _upsert(self, curs: Cursor[DictRow], rows: list[dict[str, Any]]) -> None:
        names = ", ".join(COLUMNS)
        placeholders = ", ".join(["%s"] * len(COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("id", "created_at"))
        curs.executemany(
            f"INSERT INTO {self.schema}.generations AS g ({names}) VALUES ({placeholders}) "
            f"ON CONFLICT (id, created_at) DO UPDATE SET {updates} "
            "WHERE g.version < excluded.version",
            [
                [Jsonb(row[c]) if c in _JSON and row[c] is not None else row[c] for c in COLUMNS]
                for row in rows
            ],
        )
