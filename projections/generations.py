"""The generations projection: one row per generation, in monthly partitions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec
from prometheus_client import Counter
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from application.catalogue import default_catalogue
from application.live import LiveMessage, LivePublisher
from application.logs import topic_of
from application.saga.deadlines import Patience
from domain.credits import to_credits
from domain.generation import STATUS_AFTER, TERMINAL, Generation
from projections.base import NotifiedEvent, month_of
from projections.bulk import Row
from projections.feed import FeedView

#: Counted by the live runner once its batch is committed (a retried batch counts once).
ENDED = Counter(
    "pixevo_generations_total",
    "Generations that reached a final status, by model and status",
    ["model", "status"],
)

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
    "deadline_at",
    "waiting",
)
_JSON = ("params", "result_metadata", "error", "waiting")


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
            "status": STATUS_AFTER[Generation.Requested],
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
            "deadline_at": None,
            "waiting": None,
        }
    if row is None or event.originator_version <= row["version"]:
        return row
    row = {**row, "updated_at": event.timestamp, "version": event.originator_version}
    status = STATUS_AFTER.get(type(event))
    if status is not None:
        row["status"] = status
    change = _CHANGES.get(type(event))
    if change is not None:
        change(row, event)
    return row


def _produced(row: dict[str, Any], event: Any) -> None:
    row.update(
        result_metadata={
            "storage_key": event.storage_key,
            "width": event.width,
            "height": event.height,
            "content_type": event.content_type,
            "bytes": event.size_bytes,
        },
    )


def _processed(row: dict[str, Any], event: Any) -> None:
    row["result_metadata"] = {
        **(row["result_metadata"] or {}),
        "processed": {
            "artefacts": event.artefacts,
            "blurhash": event.blurhash,
            "quality_score": event.quality_score,
            "nsfw_score": event.nsfw_score,
            "classifier": event.classifier,
        },
    }


def _derived(row: dict[str, Any], event: Any) -> None:
    meta = row["result_metadata"] or {}
    processed = dict(meta.get("processed") or {})
    kinds = {a["kind"] for a in event.artefacts}
    kept = [a for a in processed.get("artefacts") or [] if a["kind"] not in kinds]
    processed["artefacts"] = [*kept, *event.artefacts]
    processed["derived"] = True  # all there will be: a missing one is not coming
    row["result_metadata"] = {**meta, "processed": processed}


def _blocked(row: dict[str, Any], event: Any) -> None:
    row.update(
        error={"code": "content_blocked", "message": f"blocked by {event.layer} moderation"},
        completed_at=row["completed_at"] or event.timestamp,
        result_metadata={
            **(row["result_metadata"] or {}),
            "moderation": {
                "layer": event.layer,
                "reason": event.reason,
                "version": event.version,
                "score": event.score,
                "policy": event.policy,
            },
        },
    )
    if event.charged is not None:
        row["charged_credits"] = to_credits(event.charged)


def _completed(row: dict[str, Any], event: Any) -> None:
    row.update(
        charged_credits=to_credits(event.charged),
        completed_at=event.timestamp,
        served_from_cache=event.from_cache is not None,
        generation_time_ms=_ms(row["created_at"], event.timestamp),
    )


_CHANGES: dict[type, Callable[[dict[str, Any], Any], None]] = {
    Generation.Queued: lambda row, e: row.update(model_key=e.model, provider=e.provider),
    Generation.FellBack: lambda row, e: row.update(
        model_key=e.to_model,
        provider=e.provider,
        fallback_from=row["fallback_from"] or e.from_model,
    ),
    Generation.Deferred: lambda row, e: row.update(
        notice=f"taking longer than usual: {e.reason}; it will resume by itself",
        waiting={
            "reason": e.reason,
            "retry_at": e.retry_at.isoformat() if e.retry_at else None,
            "give_up_at": e.give_up_at.isoformat() if e.give_up_at else None,
        },
    ),
    Generation.Submitted: lambda row, _: row.update(notice=None, waiting=None),
    Generation.Produced: _produced,
    Generation.Processed: _processed,
    Generation.Derived: _derived,
    Generation.Blocked: _blocked,
    Generation.Reinstated: lambda row, _: row.update(error=None),
    Generation.Completed: _completed,
    Generation.Failed: lambda row, e: row.update(
        error={"code": e.code, "message": e.message},
        completed_at=e.timestamp,
        charged_credits=to_credits(0),
        waiting=None,
    ),
    Generation.Cancelled: lambda row, e: row.update(
        completed_at=e.timestamp, charged_credits=to_credits(0), waiting=None
    ),
}


#: Changes subscribers do not see (the status stays ``processing``; ``completed`` follows).
_SILENT = frozenset({Generation.Processed})
#: The live message of a completed generation's derivatives, made after it was shown.
DERIVATIVES = "derivatives"
_DATES = ("created_at", "updated_at", "completed_at", "deadline_at")
_AMOUNTS = ("cost_credits", "charged_credits")


#: Events that restart the clock of a generation's status (as the aggregate's ``since``).
_CLOCKED = frozenset({*STATUS_AFTER, Generation.FellBack})


def deadline(
    row: dict[str, Any], event: Any, allowance: Callable[[str], timedelta]
) -> datetime | None:
    """The row's ``deadline_at`` after ``event``: as ``Generation.due`` decides it."""
    if row["status"] in TERMINAL:
        return None
    waiting = row.get("waiting") or {}
    if waiting.get("give_up_at"):
        return datetime.fromisoformat(waiting["give_up_at"])
    if type(event) in _CLOCKED:
        return event.timestamp + allowance(row["model_key"])  # type: ignore[no-any-return]
    return row.get("deadline_at")


def feed_entry(row: dict[str, Any], event: Any) -> tuple[str, dict[str, Any]]:
    """(type, data) of the live message for ``event``, given the row it produced.

    A final message carries the whole row (the API renders it as the generation); the others
    carry what a progress display needs.
    """
    if type(event) in STATUS_AFTER and row["status"] in TERMINAL:  # it ended: type = status
        return row["status"], row_to_json(row)
    if isinstance(event, Generation.Derived):  # shown already: the whole generation again
        return DERIVATIVES, row_to_json(row)
    return "status", {
        "generation_id": str(row["id"]),
        "status": row["status"],
        "model": row["model_key"],
        "provider": row["provider"],
        "notice": row["notice"],
        "waiting": row.get("waiting"),
        "fallback_from": row["fallback_from"],
        "at": event.timestamp.isoformat(),
    }


def row_to_json(row: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(row)
    return data


def row_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`row_to_json`, for the columns whose type JSON does not keep."""
    row = dict(data)
    row["id"] = UUID(row["id"])
    for name in _DATES:
        if row.get(name) is not None:
            row[name] = datetime.fromisoformat(row[name])
    for name in _AMOUNTS:
        if row.get(name) is not None:
            row[name] = Decimal(row[name])
    return row


def _ms(start: datetime, end: datetime) -> int:
    return int((end - start).total_seconds() * 1000)


class GenerationsView(FeedView):
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
            Generation.CancelRequested,
            Generation.Produced,
            Generation.Processed,
            Generation.Derived,
            Generation.Completed,
            Generation.Blocked,
            Generation.Reinstated,
            Generation.Failed,
            Generation.Cancelled,
        )
    )
    partitioned_tables = ("generations", "feed")
    feed_subject = "generation_id"

    def __init__(
        self,
        *args: Any,
        publisher: LivePublisher | None = None,
        allowance: Callable[[str], timedelta] | None = None,
        **kwargs: Any,
    ) -> None:
        """``publisher``: where committed feed messages go (none while rebuilding);
        ``allowance``: how long a model's generation may stay in one status."""
        super().__init__(*args, publisher=publisher, **kwargs)
        self.allowance = allowance or Patience().allowance_of(default_catalogue())

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        self._ended: list[tuple[str, str]] = []
        ids = list({item.event.originator_id for item in batch})
        rows: dict[UUID, dict[str, Any] | None] = self._load(curs, ids)
        touched, feed = self._fold(rows, batch)
        self._write(curs, batch, [row for key in touched if (row := rows.get(key)) is not None])
        self._write_feed(curs, feed)

    def _load(self, curs: Cursor[DictRow], ids: list[UUID]) -> dict[UUID, Any]:
        curs.execute(f"SELECT * FROM {self.schema}.generations WHERE id = ANY(%s)", [ids])
        return {row["id"]: dict(row) for row in curs}

    def _fold(
        self, rows: dict[UUID, dict[str, Any] | None], batch: Sequence[NotifiedEvent]
    ) -> tuple[set[UUID], list[tuple[datetime, LiveMessage]]]:
        """Folds the batch into ``rows``: the ids it touched, and the feed's new messages."""
        touched: set[UUID] = set()
        feed: list[tuple[datetime, LiveMessage]] = []
        for item in batch:
            key = item.event.originator_id
            before = rows.get(key)
            after = rows[key] = apply(before, item.event)
            if after is not None and after is not before:
                after["deadline_at"] = deadline(after, item.event, self.allowance)
            touched.add(key)
            if (
                after is not None
                and type(item.event) in STATUS_AFTER
                and after["status"] in TERMINAL
            ):
                self._ended.append((after["model_key"], after["status"]))
            if after is not None and after is not before and type(item.event) not in _SILENT:
                kind, data = feed_entry(after, item.event)
                message = LiveMessage(
                    type=kind,
                    generation_id=key,
                    user_id=after["user_id"],
                    data=data,
                    position=item.notification_id,
                )
                feed.append((item.event.timestamp, message))
        return touched, feed

    def _write(
        self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent], changed: list[dict[str, Any]]
    ) -> None:
        months = {month_of(row["created_at"]) for row in changed}
        for table, month in [("generations", m) for m in months] + [
            ("feed", m) for m in {month_of(item.event.timestamp) for item in batch}
        ]:
            curs.execute(
                "SELECT public.pixevo_ensure_partition(%s::regclass, %s)",
                [f"{self.schema}.{table}", month],
            )
        if changed:
            self._upsert(curs, changed)

    def after_commit(self) -> None:
        super().after_commit()
        if self.publisher is not None:  # the live tables' runner: each event is counted once
            for model, status in getattr(self, "_ended", ()):
                ENDED.labels(model, status).inc()
        self._ended = []

    def _upsert(self, curs: Cursor[DictRow], rows: list[dict[str, Any]]) -> None:
        names = ", ".join(COLUMNS)
        placeholders = ", ".join(["%s"] * len(COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("id", "created_at"))
        curs.executemany(
            f"INSERT INTO {self.schema}.generations AS g ({names}) VALUES ({placeholders}) "
            f"ON CONFLICT (id, created_at) DO UPDATE SET {updates} "
            "WHERE g.version < excluded.version",
            [_values(row) for row in rows],
        )

    # -- building in bulk (a rebuild's fresh tables: see projections.bulk) ------------------

    @property
    def bulk_columns(self) -> Mapping[str, Sequence[str]]:
        return {"generations": COLUMNS, "feed": self.feed_columns}

    def bulk_load(self, curs: Cursor[DictRow], keys: list[UUID]) -> dict[UUID, Any]:
        return self._load(curs, keys)

    def bulk_fold(self, states: dict[UUID, Any], batch: Sequence[NotifiedEvent]) -> list[Row]:
        self._ended = []  # counted by the live runner only
        _, feed = self._fold(states, batch)
        return [("feed", row) for row in self.feed_rows(feed)]

    def bulk_rows(self, states: Mapping[UUID, Any]) -> Iterator[Row]:
        return (("generations", _values(row)) for row in states.values() if row is not None)

    def bulk_forget(self, curs: Cursor[DictRow], keys: list[UUID]) -> None:
        curs.execute(f"DELETE FROM {self.schema}.generations WHERE id = ANY(%s)", [keys])


def _values(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row's values in the order of ``COLUMNS``, as the statements take them."""
    return tuple(Jsonb(row[c]) if c in _JSON and row[c] is not None else row[c] for c in COLUMNS)
