"""The reactions that finish what an install or a refund starts.

    billing Spent (cause: install) ─▶ RecordInstall ─▶ Install.Made (if the request stopped first)
    Install.Made / Upgraded ─▶ CopyInstalledWorkflow ─▶ the buyer's copy, at the install's version
    Install.Made ─▶ PayOutInstall ─▶ seller's earning and platform's fee (in batches)
    Install.Refunded ─▶ RefundInstall ─▶ buyer refunded, earning and fee clawed back

Each is idempotent by what it writes (an install's id, a copy's id, a deposit or clawback once
per cause), not by a tracking record: the request may have done the work before the message
arrives, and a batch of payouts is many messages in one transaction. A message delivered twice,
or a request that already did the work, records nothing twice.

``PayOutInstall`` is the one on the hot path of a popular listing: every sale credits the same
seller and the platform's single account. Its messages are combined (see
:mod:`application.combining`): the worker's threads hand their sales to whichever of them is
saving, which credits them all in one transaction, so a burst of installs costs a few saves of
the hot accounts instead of one conflicting save each.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.billing import BillingApplication, Payout
from application.combining import Combiner
from application.logs import topic_of
from application.marketplace import MarketplaceApplication, copy_of, payout_of
from application.reactions import Reaction
from application.workflows import WorkflowsApplication
from domain.billing import CreditAccount
from domain.marketplace import Install, install_cause


class RecordInstall(Reaction):
    """A buyer's payment for an install whose request stopped before recording it: the
    payment names the listing and version, so the install is recorded from it."""

    name = "record_install"
    upstream = "billing"
    topics = (topic_of(CreditAccount.Spent),)

    def __init__(self, marketplace: MarketplaceApplication) -> None:
        self.marketplace = marketplace

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:  # noqa: ARG002
        if not isinstance(event, CreditAccount.Spent) or event.cause_type != "install":
            return False
        detail = event.detail
        _, made = self.marketplace.record_install(
            UUID(detail["buyer_id"]),
            UUID(detail["listing_id"]),
            int(detail["version"]),
            event.amount,
        )
        return made


class CopyInstalledWorkflow(Reaction):
    """The buyer's copy of an install, made (or moved to an upgraded version) if the request
    stopped before."""

    name = "copy_installed_workflow"
    upstream = "marketplace"
    topics = (topic_of(Install.Made), topic_of(Install.Upgraded))

    def __init__(
        self, marketplace: MarketplaceApplication, workflows: WorkflowsApplication
    ) -> None:
        self.marketplace, self.workflows = marketplace, workflows

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:  # noqa: ARG002
        install = self.marketplace.installed(event.originator_id)
        self.workflows.follow_listing(copy_of(install))
        return True


class PayOutInstall(Reaction):
    """An install's earning to its seller and fee to the platform, credited in batches."""

    name = "pay_out_install"
    upstream = "marketplace"
    topics = (topic_of(Install.Made),)

    def __init__(self, billing: BillingApplication) -> None:
        self.billing = billing
        self._combiner: Combiner[Payout] = Combiner(billing.pay_out)

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:  # noqa: ARG002
        if not isinstance(event, Install.Made):
            return False
        self._combiner.submit(
            Payout(
                cause=install_cause(event.originator_id),
                buyer_id=event.buyer_id,
                seller_id=event.creator_id,
                price=event.price,
                earning=event.earning,
                fee=event.fee,
            )
        )
        return True


class RefundInstall(Reaction):
    """A refund recorded whose money the request did not move: moved here, once."""

    name = "refund_install"
    upstream = "marketplace"
    topics = (topic_of(Install.Refunded),)

    def __init__(self, marketplace: MarketplaceApplication, billing: BillingApplication) -> None:
        self.marketplace, self.billing = marketplace, billing

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:  # noqa: ARG002
        if not isinstance(event, Install.Refunded):
            return False
        install = self.marketplace.installed(event.originator_id)
        return self.billing.refund(payout_of(install), event.reason)
