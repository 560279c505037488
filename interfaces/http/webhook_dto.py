"""Webhooks' request and response bodies (API.md, Webhooks)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from application.webhooks import MAX_URL
from domain.webhook import EVENT_TYPES

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL)]
EventType = Literal[
    "generation.completed",
    "generation.failed",
    "generation.blocked",
    "workflow_run.completed",
    "workflow_run.failed",
    "install.created",
]
Instant = Annotated[datetime, msgspec.Meta(tz=True)]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]  # noqa: S101


class CreateWebhook(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    events: Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(EVENT_TYPES))]


class Redeliver(msgspec.Struct, forbid_unknown_fields=True):
    """Events at or after ``since`` and before ``until`` (none: up to now)."""

    since: Instant
    until: Instant | None = None


class WebhookView(msgspec.Struct):
    """An endpoint. ``secret`` is shown when it is made and by ``GET /v1/webhooks/{id}``
    (its owner's alone), never in the list."""

    id: UUID
    url: str
    events: list[str]
    status: Literal["active", "disabled"]
    created_at: datetime
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    secret: str | None = None


class WebhookList(msgspec.Struct):
    items: list[WebhookView]
    next_cursor: str | None


class DeliveryView(msgspec.Struct):
    id: str
    #: The ``webhook-id`` it is sent with: the same for every attempt and redelivery.
    message_id: str
    event_type: str
    status: Literal["pending", "delivered", "failing", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    occurred_at: datetime
    redelivery: bool


class DeliveryList(msgspec.Struct):
    items: list[DeliveryView]
    next_cursor: str | None


class Redelivery(msgspec.Struct):
    queued: int


def webhook_view(doc: dict[str, Any]) -> WebhookView:
    return WebhookView(
        id=doc["id"],
        url=doc["url"],
        events=list(doc["events"]),
        status=doc["status"],
        created_at=doc["created_at"],
        disabled_reason=doc.get("disabled_reason"),
        disabled_at=doc.get("disabled_at"),
        secret=doc.get("secret"),
    )


def delivery_view(row: dict[str, Any]) -> DeliveryView:
    open_ = row["status"] in ("pending", "failing")
    return DeliveryView(
        id=f"dlv_{row['sequence']}",
        message_id=row["message_id"],
        event_type=row["event_type"],
        status=row["status"],
        attempts=row["attempts"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        last_attempt_at=row["last_attempt_at"],
        next_attempt_at=row["next_attempt_at"] if open_ else None,
        occurred_at=row["occurred_at"],
        redelivery=row["redelivery"],
    )
