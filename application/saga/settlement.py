"""Settlement: a generation's end captures its hold (what it charged) or releases it."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application import tracing
from application.billing import BillingApplication
from application.generations import GenerationsApplication
from application.logs import topic_of
from application.reactions import Reaction
from application.retry import retry_on_conflict
from domain.credits import hold_id_for
from domain.generation import ENDINGS, Generation


class SettleGeneration(Reaction):
    name = "settle_generation"
    upstream = "generations"
    topics = tuple(topic_of(c) for c in ENDINGS)

    def __init__(self, generations: GenerationsApplication, billing: BillingApplication) -> None:
        self.generations, self.billing = generations, billing

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        with tracing.span("billing.settle", attributes={"pixevo.outcome": type(event).__name__}):
            return retry_on_conflict(self._settle)(event, tracking)

    def _settle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if self.billing.already_processed(tracking):
            return False
        generation = self.generations.generation(None, event.originator_id)
        if generation.shared_hold is not None:  # its cause settles its hold
            return self.billing.save_tracked(tracking)
        account = self.billing.load_account(generation.user_id)
        hold = hold_id_for(generation.cause)
        if str(hold) in account.holds:
            if isinstance(event, Generation.Completed):
                note = None
                if generation.cancel_requested:  # the provider finished before the cancel
                    note = "cancel asked after the provider had finished: billed as delivered"
                account.capture(hold, event.charged, note)
            elif isinstance(event, Generation.Blocked):
                if event.charged is not None:  # None: a rescreen after billing was settled
                    note = (
                        f"blocked by {event.layer} ({event.version}); "
                        f"billing policy: {event.policy}"
                    )
                    if event.charged:
                        account.capture(hold, event.charged, note)
                    else:
                        account.release(hold, note)
            else:
                account.release(hold)
        return self.billing.save_tracked(tracking, account)
