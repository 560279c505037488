"""A probe reaction for the reactions backbone's tests: counts each account's deposits.

Its effect is deliberately *not* idempotent by itself (a counter that goes up), so only the
tracking record written with it can keep a redelivered message from counting twice.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.base import PixevoApplication
from application.logs import topic_of
from application.reactions import Reaction
from application.retry import retry_on_conflict
from domain.billing import CreditAccount

_NS = UUID("5b0c2d8e-1f3a-4c6b-9e7d-2a1b3c4d5e6f")


class Tally(Aggregate):
    class Started(Aggregate.Created):
        account_id: UUID

    class Counted(Aggregate.Event):
        notification_id: int

        def apply(self, aggregate: Any) -> None:
            aggregate.count += 1

    def __init__(self, account_id: UUID) -> None:
        self.account_id = account_id
        self.count = 0

    @classmethod
    def start(cls, account_id: UUID) -> Tally:
        return cls._create(cls.Started, id=uuid5(_NS, str(account_id)), account_id=account_id)


class ProbeApplication(PixevoApplication):
    name = "probe"


class CountDeposits(Reaction):
    name = "count_deposits"
    upstream = "billing"
    topics = (topic_of(CreditAccount.Deposited),)

    def __init__(self, probe: ProbeApplication) -> None:
        self.probe = probe

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        return bool(retry_on_conflict(self._count)(event, tracking))

    def _count(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if self.probe.already_processed(tracking):
            return False
        try:
            tally = self.probe.load(uuid5(_NS, str(event.originator_id)), Tally)
        except AggregateNotFoundError:
            tally = Tally.start(event.originator_id)
        tally.trigger_event(Tally.Counted, notification_id=tracking.notification_id)
        return self.probe.save_tracked(tracking, tally)


def probe_reaction(container: Any) -> CountDeposits:
    return CountDeposits(container.applications["probe"])


APPLICATIONS = {"probe": ProbeApplication}
REACTIONS = (probe_reaction,)
