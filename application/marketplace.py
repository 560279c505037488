"""The marketplace context: listings of workflow versions and paid installs of them.

An install touches three contexts, each write idempotent by a derived id or cause, in an order
that never loses money:

1. billing: the buyer pays the price (``Spent``, cause the install; refused with nothing recorded
   when the buyer cannot pay);
2. marketplace: the ``Install`` is recorded (its id derives from buyer and listing);
3. workflows: the buyer's copy is made (its id derives from the install).

The request does all three at once, so the buyer can run the copy right away. Should it stop
between them, reactions finish the rest from the log: the payment event names the listing and
version, so :class:`application.marketplace_reactions.RecordInstall` records the install, and
:class:`~application.marketplace_reactions.CopyInstalledWorkflow` makes the copy. The seller's
earning and the platform's fee are paid by a reaction too, in batches (the hot accounts).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import IntegrityError

from application.base import PixevoApplication, command
from application.billing import BillingApplication, Payout
from application.errors import Conflict, InvalidRequest, NotFound
from application.text import NUL_MESSAGE, nul_paths
from application.workflows import InstalledCopy, WorkflowsApplication
from domain.credits import format_credits
from domain.ids import uuid7
from domain.marketplace import Install, Listing, install_cause, install_id_for

MAX_TITLE = 200
MAX_DESCRIPTION = 5000


class ListingNotFound(NotFound, LookupError):
    pass


class InstallNotFound(NotFound, LookupError):
    pass


class NotInstalled(Conflict):
    """An upgrade of a workflow that no install made (HTTP 409)."""


class CopyNotListable(Conflict):
    """A listing of an installed copy: only one's own work may be sold (HTTP 409)."""


def listing_document(listing: Listing) -> dict[str, Any]:
    """A listing as the write side has it (``installs`` is the read side's count: 0 here)."""
    return {
        "id": listing.id,
        "workflow_id": listing.workflow_id,
        "version": listing.workflow_version,
        "title": listing.title,
        "description": listing.description,
        "price_credits": format_credits(listing.price),
        "creator_id": listing.creator_id,
        "status": listing.status,
        "installs": 0,
        "created_at": listing.created_on,
        "updated_at": listing.modified_on,
    }


def install_document(install: Install) -> dict[str, Any]:
    return {
        "install_id": install.id,
        "listing_id": install.listing_id,
        "workflow_id": install.workflow_id,
        "version": install.workflow_version,
        "price_credits": format_credits(install.price),
        "status": install.status,
        "created_at": install.created_on,
    }


def payout_of(install: Install) -> Payout:
    return Payout(
        cause=install.cause,
        buyer_id=install.buyer_id,
        seller_id=install.creator_id,
        price=install.price,
        earning=install.earning,
        fee=install.fee,
    )


def copy_of(install: Install) -> InstalledCopy:
    return InstalledCopy(
        workflow_id=install.workflow_id,
        owner_id=install.buyer_id,
        name=install.title,
        description=install.description,
        source_workflow_id=install.source_workflow_id,
        version=install.workflow_version,
        listing_id=install.listing_id,
        install_id=install.id,
    )


class MarketplaceApplication(PixevoApplication):
    name = "marketplace"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        billing: BillingApplication | None = None,
        workflows: WorkflowsApplication | None = None,
        fee_rate: Decimal = Decimal("0.20"),
    ) -> None:
        """``fee_rate``: the platform's share of each install's price (recorded with it)."""
        super().__init__(env)
        self.billing = billing or BillingApplication()
        self.workflows = workflows or WorkflowsApplication()
        self.fee_rate = fee_rate

    # -- listings ------------------------------------------------------------------------------

    @command
    def create_listing(
        self,
        creator_id: UUID,
        workflow_id: UUID,
        version: int,
        title: str,
        description: str,
        price: int,
    ) -> dict[str, Any]:
        """Lists a version of the creator's own workflow (not a copy they installed)."""
        template = self.workflows.template(creator_id, workflow_id)
        if template.source is not None:
            raise CopyNotListable("an installed workflow cannot be listed again")
        self.workflows.graph_of(template, version)  # the version must exist
        title = _checked(title, description)
        listing = Listing.create(
            uuid7(), creator_id, workflow_id, version, title, description, price
        )
        self.save(listing)
        return listing_document(listing)

    @command
    def offer_version(self, creator_id: UUID, listing_id: UUID, version: int) -> dict[str, Any]:
        listing = self.listing(creator_id, listing_id)
        template = self.workflows.template(creator_id, listing.workflow_id)
        self.workflows.graph_of(template, version)
        listing.offer_version(version)
        self.save(listing)
        return listing_document(listing)

    @command
    def update_listing(
        self,
        creator_id: UUID,
        listing_id: UUID,
        title: str | None = None,
        description: str | None = None,
        price: int | None = None,
    ) -> dict[str, Any]:
        listing = self.listing(creator_id, listing_id)
        if title is not None or description is not None:
            new_title = title if title is not None else listing.title
            new_description = description if description is not None else listing.description
            listing.describe(_checked(new_title, new_description), new_description)
        if price is not None:
            listing.reprice(price)
        self.save(listing)
        return listing_document(listing)

    @command
    def unlist(self, creator_id: UUID, listing_id: UUID) -> dict[str, Any]:
        listing = self.listing(creator_id, listing_id)
        listing.unlist()
        self.save(listing)
        return listing_document(listing)

    def listing(self, creator_id: UUID | None, listing_id: UUID) -> Listing:
        """The listing; with ``creator_id``, only if it is theirs (else not found)."""
        try:
            listing = self.load(listing_id, Listing)
        except (AggregateNotFoundError, TypeError):
            raise ListingNotFound(f"no listing {listing_id}") from None
        if creator_id is not None and listing.creator_id != creator_id:
            raise ListingNotFound(f"no listing {listing_id}")
        return listing

    # -- installs ------------------------------------------------------------------------------

    def install(self, buyer_id: UUID, listing_id: UUID) -> tuple[dict[str, Any], bool]:
        """The buyer's install of the listing: ``(install, True)`` when this call bought it,
        ``(the existing install, False)`` when it was bought before (nothing charged again)."""
        listing = self.listing(None, listing_id)
        existing = self._install_or_none(install_id_for(buyer_id, listing_id))
        if existing is not None:
            return install_document(existing), False
        listing.check_installable_by(buyer_id)
        install_id = install_id_for(buyer_id, listing_id)
        paid, paid_now = 0, False
        if listing.price:
            paid, paid_now = self.billing.spend(
                buyer_id,
                listing.price,
                install_cause(install_id),
                {
                    "listing_id": str(listing.id),
                    "version": str(listing.workflow_version),
                    "buyer_id": str(buyer_id),
                },
            )
        install, recorded = self.record_install(
            buyer_id, listing.id, listing.workflow_version, paid
        )
        self.workflows.install_copy(copy_of(install))
        # bought by this request if it paid (another request, or the payment's reaction, may
        # have recorded it); a free install, if it recorded it
        return install_document(install), paid_now if listing.price else recorded

    @command
    def record_install(
        self, buyer_id: UUID, listing_id: UUID, version: int, paid: int
    ) -> tuple[Install, bool]:
        """Records a paid install once: ``(install, True)`` if recorded now."""
        existing = self._install_or_none(install_id_for(buyer_id, listing_id))
        if existing is not None:
            return existing, False
        install = Install.make(
            self.listing(None, listing_id), buyer_id, version, paid, self.fee_rate
        )
        try:
            self.save(install)
        except IntegrityError:  # a concurrent request recorded it first
            return self.load(install.id, Install), False
        return install, True

    def installed(self, install_id: UUID) -> Install:
        found = self._install_or_none(install_id)
        if found is None:
            raise InstallNotFound(f"no install {install_id}")
        return found

    def _install_or_none(self, install_id: UUID) -> Install | None:
        try:
            return self.load(install_id, Install)
        except (AggregateNotFoundError, TypeError):
            return None

    @command
    def upgrade(self, buyer_id: UUID, workflow_id: UUID) -> dict[str, Any]:
        """Moves the buyer's installed copy to the version the listing offers now (free)."""
        template = self.workflows.template(buyer_id, workflow_id)
        source = template.source or {}
        if "install_id" not in source:
            raise NotInstalled("this workflow was not installed from a listing")
        install = self.installed(UUID(source["install_id"]))
        if install.status == "refunded":
            raise NotInstalled("this install was refunded")
        offered = self.listing(None, install.listing_id).workflow_version
        if install.upgrade(offered):
            self.save(install)
        return self.workflows.follow_listing(copy_of(install))

    @command
    def refund(self, admin_id: UUID, install_id: UUID, reason: str) -> dict[str, Any]:
        """Refunds an install once (a second refund: 409): the buyer gets the price back, the
        creator's earning and the platform's fee are clawed back."""
        if not reason.strip():
            raise InvalidRequest("reason", "say why the install is refunded")
        install = self.installed(install_id)
        install.refund(reason, admin_id)
        self.save(install)
        self.billing.refund(payout_of(install), reason)
        return install_document(install)


def _checked(title: str, description: str) -> str:
    for field in nul_paths({"title": title, "description": description}, ""):
        raise InvalidRequest(field, NUL_MESSAGE)
    if not title.strip() or len(title) > MAX_TITLE:
        raise InvalidRequest("title", f"1 to {MAX_TITLE} characters")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidRequest("description", f"at most {MAX_DESCRIPTION} characters")
    return title.strip()
