"""The webhooks outbox: deliveries as a projection of the logs whose events become messages.

A view follows one upstream log, so there are four, writing one schema (``proj_webhooks``):

* :class:`WebhookEndpointsView` (the webhooks log): each endpoint's owner, URL, event types,
  secret and status;
* :class:`WebhookGenerationsView` (generations): ``generation.completed|failed|blocked``;
* :class:`WebhookRunsView` (workflows): ``workflow_run.completed|failed``;
* :class:`WebhookInstallsView` (marketplace): ``install.created``, to the buyer.

An event view records each message once (``events``, by a message id derived from the
upstream application and the notification id, so it is the same for every endpoint and for
every redelivery) and a delivery row for every endpoint of the event's owner (not deleted: a
disabled one keeps them pending until it is enabled) subscribed to its type and registered by
the event's time. The endpoints view, projecting a registration,
adds the deliveries of the owner's messages from the registration on that an event view
recorded before it knew the endpoint (the views run at their own pace). Both take the owner's
advisory lock first, so whichever commits second sees the other's rows, and a delivery is made
once (a unique index), never twice, whichever order they run in.

These tables are delivery state, not a cache of the logs: ``pixevo projections rebuild``
refuses them (a rebuild would send everything again), and every write is idempotent, so a
replayed batch adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier
from psycopg.types.json import Jsonb

from application import assets
from application.logs import topic_of
from domain.credits import format_credits
from domain.generation import Generation
from domain.marketplace import Install
from domain.webhook import WebhookEndpoint
from domain.workflow import WorkflowExecution
from projections.base import MIGRATIONS_DIR, NotifiedEvent, ProjectionView

SCHEMA = "proj_webhooks"
#: NOTIFY channel the sender listens on: deliveries became due.
CHANNEL = "pixevo_webhooks"
#: The class id of the owners' advisory locks (the object id is the owner's hash).
OWNER_LOCK_CLASS = 0x5748_4B53
_MESSAGES = uuid5(NAMESPACE_URL, "pixevo:webhook-message")


def message_id(application: str, notification_id: int) -> str:
    """The webhook-id of an event: the same for every endpoint, attempt and redelivery."""
    return f"msg_{uuid5(_MESSAGES, f'{application}:{notification_id}')}"


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    owner_id: UUID
    event_type: str
    occurred_at: datetime
    data: dict[str, Any]


def lock_owners(curs: Cursor[Any], owners: Sequence[UUID]) -> None:
    """Takes the advisory locks of these owners' outboxes until the transaction ends (in one
    order, so two writers never deadlock)."""
    curs.execute(
        "SELECT pg_advisory_xact_lock(%s, h) FROM "
        "(SELECT DISTINCT hashtext(o::text) AS h FROM unnest(%s::uuid[]) o ORDER BY 1) s",
        [OWNER_LOCK_CLASS, list(owners)],
    )


class OutboxView(ProjectionView):
    """A view writing the shared outbox schema (its tracking table is its own)."""

    rebuildable: ClassVar[bool] = False

    @classmethod
    def live_schema(cls) -> str:
        return SCHEMA

    def table_statements(self) -> list[Composed]:
        ddl = Path(MIGRATIONS_DIR / "projections" / "webhooks.sql").read_text()
        return [SQL(ddl).format(schema=Identifier(self.schema))]

    def record(self, curs: Cursor[DictRow], messages: Sequence[Message]) -> None:
        """Records the messages and their deliveries to the endpoints that want them."""
        if not messages:
            return
        lock_owners(curs, [m.owner_id for m in messages])
        curs.execute(
            f"INSERT INTO {self.schema}.events "
            "(message_id, owner_id, event_type, occurred_at, payload) "
            "SELECT * FROM unnest(%s::text[], %s::uuid[], %s::text[], %s::timestamptz[], "
            "%s::jsonb[]) ON CONFLICT DO NOTHING",
            [
                [m.message_id for m in messages],
                [m.owner_id for m in messages],
                [m.event_type for m in messages],
                [m.occurred_at for m in messages],
                [Jsonb(msgspec.to_builtins(m.data)) for m in messages],
            ],
        )
        curs.execute(
            f"INSERT INTO {self.schema}.deliveries "
            "(endpoint_id, message_id, event_type, occurred_at) "
            "SELECT e.id, v.message_id, v.event_type, v.occurred_at "
            "FROM unnest(%s::text[], %s::uuid[], %s::text[], %s::timestamptz[]) "
            "WITH ORDINALITY AS v(message_id, owner_id, event_type, occurred_at, ord) "
            f"JOIN {self.schema}.endpoints e ON e.owner_id = v.owner_id "
            "AND e.status <> 'deleted' AND v.event_type = ANY(e.events) "
            "AND e.created_at <= v.occurred_at "
            "ORDER BY v.ord, e.id "
            "ON CONFLICT (endpoint_id, message_id) WHERE NOT redelivery DO NOTHING",
            [
                [m.message_id for m in messages],
                [m.owner_id for m in messages],
                [m.event_type for m in messages],
                [m.occurred_at for m in messages],
            ],
        )
        if curs.rowcount:
            curs.execute("SELECT pg_notify(%s, '')", [CHANNEL])

    def load_subjects(self, curs: Cursor[DictRow], ids: Sequence[UUID]) -> dict[UUID, Any]:
        curs.execute(
            f"SELECT id, owner_id, data, version FROM {self.schema}.subjects WHERE id = ANY(%s)",
            [list(ids)],
        )
        return {row["id"]: dict(row) for row in curs.fetchall()}

    def write_subjects(self, curs: Cursor[DictRow], subjects: Sequence[dict[str, Any]]) -> None:
        self.write_rows(
            curs,
            "subjects",
            {
                "id": ("uuid", [s["id"] for s in subjects]),
                "owner_id": ("uuid", [s["owner_id"] for s in subjects]),
                "data": ("jsonb", [Jsonb(msgspec.to_builtins(s["data"])) for s in subjects]),
                "version": ("int", [s["version"] for s in subjects]),
            },
            key="id",
        )


class WebhookEndpointsView(OutboxView):
    projection_name = "webhook_endpoints"
    upstream = "webhooks"
    topics = tuple(
        topic_of(cls)
        for cls in (
            WebhookEndpoint.Registered,
            WebhookEndpoint.Disabled,
            WebhookEndpoint.Enabled,
            WebhookEndpoint.Deleted,
        )
    )

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        schema = self.schema
        for item in batch:
            event: Any = item.event
            endpoint_id, version = event.originator_id, event.originator_version
            if isinstance(event, WebhookEndpoint.Registered):
                lock_owners(curs, [event.owner_id])
                curs.execute(
                    f"INSERT INTO {schema}.endpoints (id, owner_id, url, events, secret, status, "
                    "created_at, version) VALUES (%s, %s, %s, %s, %s, 'active', %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [
                        endpoint_id,
                        event.owner_id,
                        event.url,
                        list(event.events),
                        event.secret,
                        event.timestamp,
                        version,
                    ],
                )
                # what the event views recorded before they knew this endpoint
                curs.execute(
                    f"INSERT INTO {schema}.deliveries "
                    "(endpoint_id, message_id, event_type, occurred_at) "
                    "SELECT %s, v.message_id, v.event_type, v.occurred_at "
                    f"FROM {schema}.events v WHERE v.owner_id = %s "
                    "AND v.event_type = ANY(%s) AND v.occurred_at >= %s "
                    "ORDER BY v.occurred_at, v.message_id "
                    "ON CONFLICT (endpoint_id, message_id) WHERE NOT redelivery DO NOTHING",
                    [endpoint_id, event.owner_id, list(event.events), event.timestamp],
                )
                continue
            changes: dict[str, Any] = {}
            if isinstance(event, WebhookEndpoint.Disabled):
                changes = {
                    "status": "disabled",
                    "disabled_reason": event.reason,
                    "disabled_at": event.timestamp,
                }
            elif isinstance(event, WebhookEndpoint.Enabled):
                changes = {
                    "status": "active",
                    "disabled_reason": None,
                    "disabled_at": None,
                    "failing_since": None,
                }
            elif isinstance(event, WebhookEndpoint.Deleted):
                changes = {"status": "deleted"}
            sets = ", ".join(f"{name} = %s" for name in changes)
            curs.execute(
                f"UPDATE {schema}.endpoints SET {sets}, version = %s "
                "WHERE id = %s AND version < %s",
                [*changes.values(), version, endpoint_id, version],
            )
            if isinstance(event, WebhookEndpoint.Enabled) and curs.rowcount:
                # what was pending resumes now, not at the next step of its old schedule
                curs.execute(
                    f"UPDATE {schema}.deliveries SET next_attempt_at = least(next_attempt_at, %s) "
                    "WHERE endpoint_id = %s AND status IN ('pending', 'failing')",
                    [event.timestamp, endpoint_id],
                )
                curs.execute("SELECT pg_notify(%s, '')", [CHANNEL])


class WebhookGenerationsView(OutboxView):
    """``generation.completed``, ``generation.failed`` and ``generation.blocked``."""

    projection_name = "webhook_generations"
    upstream = "generations"
    topics = tuple(
        topic_of(cls)
        for cls in (
            Generation.Requested,
            Generation.Queued,
            Generation.FellBack,
            Generation.Produced,
            Generation.Processed,
            Generation.Completed,
            Generation.Failed,
            Generation.Blocked,
        )
    )

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        subjects = self.load_subjects(curs, list({i.event.originator_id for i in batch}))
        changed: dict[UUID, dict[str, Any]] = {}
        messages: list[Message] = []
        for item in batch:
            event: Any = item.event
            gid = event.originator_id
            if isinstance(event, Generation.Requested):
                if gid not in subjects:
                    subjects[gid] = changed[gid] = {
                        "id": gid,
                        "owner_id": event.user_id,
                        "version": event.originator_version,
                        "data": {
                            "model": event.model,
                            "requested_model": event.model,
                            "created_at": event.timestamp.isoformat(),
                            "artefacts": [],
                        },
                    }
                continue
            subject = subjects.get(gid)
            if subject is None or event.originator_version <= subject["version"]:
                continue  # before this view existed, or a replayed batch
            subject = changed[gid] = subjects[gid] = {
                **subject,
                "version": event.originator_version,
                "data": dict(subject["data"]),
            }
            data = subject["data"]
            if isinstance(event, Generation.Queued):
                data["model"] = event.model
            elif isinstance(event, Generation.FellBack):
                data["model"] = event.to_model
            elif isinstance(event, Generation.Produced):
                data["artefacts"] = data["artefacts"] or ["original"]
            elif isinstance(event, Generation.Processed):
                data["artefacts"] = [a["kind"] for a in event.artefacts]
            else:
                messages.append(_generation_message(item, subject))
        self.write_subjects(curs, list(changed.values()))
        self.record(curs, messages)


def _generation_message(item: NotifiedEvent, subject: dict[str, Any]) -> Message:
    event: Any = item.event
    gid, data = subject["id"], subject["data"]
    outputs: list[dict[str, str]] = []
    error: dict[str, str] | None = None
    if isinstance(event, Generation.Completed):
        status = "completed"
        outputs = [{"kind": k, "url": assets.asset_url(gid, k)} for k in data["artefacts"]]
    elif isinstance(event, Generation.Failed):
        status, error = "failed", {"code": event.code, "message": event.message}
    else:
        status = "blocked"
        error = {"code": "content_blocked", "message": f"blocked by {event.layer} moderation"}
    return Message(
        message_id=message_id("generations", item.notification_id),
        owner_id=subject["owner_id"],
        event_type=f"generation.{status}",
        occurred_at=event.timestamp,
        data={
            "id": str(gid),
            "status": status,
            "model": data["model"],
            "requested_model": data["requested_model"],
            "error": error,
            "outputs": outputs,
            "url": assets.generation_url(gid),
            "created_at": data["created_at"],
            "finished_at": event.timestamp.isoformat(),
        },
    )


class WebhookRunsView(OutboxView):
    """``workflow_run.completed`` and ``workflow_run.failed``."""

    projection_name = "webhook_runs"
    upstream = "workflows"
    topics = tuple(topic_of(cls) for cls in (WorkflowExecution.Requested, WorkflowExecution.Ended))

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        subjects = self.load_subjects(curs, list({i.event.originator_id for i in batch}))
        made: list[dict[str, Any]] = []
        messages: list[Message] = []
        for item in batch:
            event: Any = item.event
            run_id = event.originator_id
            if isinstance(event, WorkflowExecution.Requested):
                if run_id not in subjects:
                    subjects[run_id] = {
                        "id": run_id,
                        "owner_id": event.user_id,
                        "version": event.originator_version,
                        "data": {
                            "workflow_id": str(event.workflow_id),
                            "workflow_version": event.workflow_version,
                            "created_at": event.timestamp.isoformat(),
                        },
                    }
                    made.append(subjects[run_id])
                continue
            subject = subjects.get(run_id)
            if subject is None or event.status not in ("completed", "failed"):
                continue
            messages.append(
                Message(
                    message_id=message_id("workflows", item.notification_id),
                    owner_id=subject["owner_id"],
                    event_type=f"workflow_run.{event.status}",
                    occurred_at=event.timestamp,
                    data={
                        "id": str(run_id),
                        **subject["data"],
                        "status": event.status,
                        "url": f"/v1/workflow-runs/{run_id}",
                        "finished_at": event.timestamp.isoformat(),
                    },
                )
            )
        self.write_subjects(curs, made)
        self.record(curs, messages)


class WebhookInstallsView(OutboxView):
    """``install.created``, to the buyer."""

    projection_name = "webhook_installs"
    upstream = "marketplace"
    topics = (topic_of(Install.Made),)

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        messages = []
        for item in batch:
            event: Any = item.event
            messages.append(
                Message(
                    message_id=message_id("marketplace", item.notification_id),
                    owner_id=event.buyer_id,
                    event_type="install.created",
                    occurred_at=event.timestamp,
                    data={
                        "id": str(event.originator_id),
                        "listing_id": str(event.listing_id),
                        "workflow_id": str(event.workflow_id),
                        "version": event.version,
                        "price_credits": format_credits(event.price),
                        "created_at": event.timestamp.isoformat(),
                    },
                )
            )
        self.record(curs, messages)


VIEWS: tuple[type[OutboxView], ...] = (
    WebhookEndpointsView,
    WebhookGenerationsView,
    WebhookRunsView,
    WebhookInstallsView,
)
