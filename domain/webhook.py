"""The webhooks context's aggregate: an endpoint a user registers to be told of their events.

A ``WebhookEndpoint`` is a URL, the event types it is subscribed to and the secret its deliveries
are signed with (Standard Webhooks). It is ``active`` until its owner deletes it, or until the
delivery sender disables it after a long continuous failure (``disabled``, with the reason); the
owner may enable it again, and what was pending is then sent.

Deliveries are not recorded here: they are a projection of the logs whose events become webhook
messages (``projections/webhooks.py``), sent by the dispatcher's webhook sender.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.errors import Conflict, DomainError

EndpointStatus = Literal["active", "disabled", "deleted"]

#: The event types an endpoint may subscribe to, and the events of which contexts they are.
EVENT_TYPES = (
    "generation.completed",
    "generation.failed",
    "generation.blocked",
    "workflow_run.completed",
    "workflow_run.failed",
    "install.created",
)


class EndpointDeleted(DomainError, Conflict):
    """A change to a deleted endpoint (HTTP 409)."""


class WebhookEndpoint(Aggregate):
    """One URL of a user's, subscribed to some event types."""

    snapshot_every: ClassVar[int] = 100

    class Registered(Aggregate.Created):
        owner_id: UUID
        url: str
        events: list[str]
        secret: str

    class Disabled(Aggregate.Event):
        reason: str

        def apply(self, aggregate: Any) -> None:
            endpoint: WebhookEndpoint = aggregate
            endpoint.status = "disabled"
            endpoint.disabled_reason, endpoint.disabled_at = self.reason, self.timestamp

    class Enabled(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            endpoint: WebhookEndpoint = aggregate
            endpoint.status = "active"
            endpoint.disabled_reason, endpoint.disabled_at = None, None

    class Deleted(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            endpoint: WebhookEndpoint = aggregate
            endpoint.status = "deleted"

    def __init__(self, owner_id: UUID, url: str, events: list[str], secret: str) -> None:
        self.owner_id, self.url, self.events, self.secret = owner_id, url, list(events), secret
        self.status: EndpointStatus = "active"
        self.disabled_reason: str | None = None
        self.disabled_at: datetime | None = None

    @classmethod
    def register(
        cls, endpoint_id: UUID, owner_id: UUID, url: str, events: list[str], secret: str
    ) -> WebhookEndpoint:
        return cls._create(
            cls.Registered, id=endpoint_id, owner_id=owner_id, url=url, events=events, secret=secret
        )

    def disable(self, reason: str) -> bool:
        """Stops deliveries to it; ``False`` (nothing recorded) if it is not active."""
        if self.status != "active":
            return False
        self.trigger_event(self.Disabled, reason=reason)
        return True

    def enable(self) -> None:
        """Deliveries resume (a repeated enable changes nothing)."""
        self._check_not_deleted()
        if self.status == "disabled":
            self.trigger_event(self.Enabled)

    def delete(self) -> None:
        if self.status != "deleted":
            self.trigger_event(self.Deleted)

    def _check_not_deleted(self) -> None:
        if self.status == "deleted":
            raise EndpointDeleted("this webhook endpoint was deleted")
