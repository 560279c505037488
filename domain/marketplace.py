"""The marketplace context's aggregates: listings of workflow versions, and installs of them.

A ``Listing`` publishes one version of its creator's workflow at a price; the creator may offer
a newer version of the same workflow, change the price for future installs, or unlist it.

An ``Install`` is one buyer's purchase of one listing. Its id derives from (buyer, listing), so
however many times (or however concurrently) a buyer installs a listing, there is one install,
paid once. Its events carry what a dispute needs: the price paid, the platform's fee and the
creator's share, the version installed, and what was refunded.

Money does not move here: the buyer's payment, the creator's earning and the platform's fee are
entries of the billing context's ledger whose cause is the install (:func:`install_cause`).
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import Any, ClassVar, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.credits import Cause
from domain.errors import Conflict, DomainError

ListingStatus = Literal["listed", "unlisted"]
InstallStatus = Literal["installed", "refunded"]

_INSTALL = uuid5(NAMESPACE_URL, "pixevo:install")
_INSTALLED_COPY = uuid5(NAMESPACE_URL, "pixevo:installed-workflow")
#: The account the platform's fees are paid into (an account with no user behind it).
PLATFORM_ACCOUNT_HOLDER = uuid5(NAMESPACE_URL, "pixevo:platform")


class ListingClosed(DomainError, Conflict):
    """An install of an unlisted listing, or a change to one (HTTP 409)."""


class OwnListing(DomainError, Conflict):
    """A creator installing their own listing (HTTP 409)."""


class AlreadyRefunded(DomainError, Conflict):
    """A second refund of the same install (HTTP 409)."""


def install_id_for(buyer_id: UUID, listing_id: UUID) -> UUID:
    """A buyer's install of a listing: one id, whatever is retried or sent twice."""
    return uuid5(_INSTALL, f"{buyer_id}/{listing_id}")


def installed_copy_id(install_id: UUID) -> UUID:
    """The buyer's own workflow an install makes."""
    return uuid5(_INSTALLED_COPY, str(install_id))


def install_cause(install_id: UUID) -> Cause:
    """The cause every ledger entry of an install carries (payment, earning, fee, refund)."""
    return Cause("install", str(install_id))


def split_price(price: int, fee_rate: Decimal) -> tuple[int, int]:
    """``(platform fee, creator's earning)`` of a price in units: the fee rounded down to the
    unit, so the two always add up to the price exactly."""
    fee = int((Decimal(price) * fee_rate).to_integral_value(rounding=ROUND_FLOOR))
    return fee, price - fee


class Listing(Aggregate):
    """One version of a creator's workflow, offered at a price."""

    snapshot_every: ClassVar[int] = 50

    class Created(Aggregate.Created):
        creator_id: UUID
        workflow_id: UUID
        version: int
        title: str
        description: str
        price: int

    class VersionOffered(Aggregate.Event):
        version: int
        previous: int

        def apply(self, aggregate: Any) -> None:
            listing: Listing = aggregate
            listing.workflow_version = self.version

    class Repriced(Aggregate.Event):
        """The price of future installs (installs made keep the price they paid)."""

        price: int
        previous: int

        def apply(self, aggregate: Any) -> None:
            listing: Listing = aggregate
            listing.price = self.price

    class Described(Aggregate.Event):
        title: str
        description: str

        def apply(self, aggregate: Any) -> None:
            listing: Listing = aggregate
            listing.title, listing.description = self.title, self.description

    class Unlisted(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            listing: Listing = aggregate
            listing.status = "unlisted"

    def __init__(
        self,
        creator_id: UUID,
        workflow_id: UUID,
        version: int,
        title: str,
        description: str,
        price: int,
    ) -> None:
        self.creator_id, self.workflow_id = creator_id, workflow_id
        #: The offered version of the workflow (``version`` is the aggregate's own).
        self.workflow_version = version
        self.title, self.description, self.price = title, description, price
        self.status: ListingStatus = "listed"

    @classmethod
    def create(
        cls,
        listing_id: UUID,
        creator_id: UUID,
        workflow_id: UUID,
        version: int,
        title: str,
        description: str,
        price: int,
    ) -> Listing:
        return cls._create(
            cls.Created,
            id=listing_id,
            creator_id=creator_id,
            workflow_id=workflow_id,
            version=version,
            title=title,
            description=description,
            price=price,
        )

    def offer_version(self, version: int) -> None:
        """Points the listing at a newer version of the same workflow."""
        self._check_listed()
        if version <= self.workflow_version:
            raise ListingClosed(
                f"version {version} is not newer than the offered version {self.workflow_version}"
            )
        self.trigger_event(self.VersionOffered, version=version, previous=self.workflow_version)

    def reprice(self, price: int) -> None:
        self._check_listed()
        if price != self.price:
            self.trigger_event(self.Repriced, price=price, previous=self.price)

    def describe(self, title: str, description: str) -> None:
        self._check_listed()
        if (title, description) != (self.title, self.description):
            self.trigger_event(self.Described, title=title, description=description)

    def unlist(self) -> None:
        """Takes the listing off the marketplace; a repeated unlist changes nothing."""
        if self.status == "listed":
            self.trigger_event(self.Unlisted)

    def check_installable_by(self, buyer_id: UUID) -> None:
        if buyer_id == self.creator_id:
            raise OwnListing("a creator cannot install their own listing")
        if self.status != "listed":
            raise ListingClosed("this listing is unlisted")

    def _check_listed(self) -> None:
        if self.status != "listed":
            raise ListingClosed("this listing is unlisted")


class Install(Aggregate):
    """A buyer's paid copy of a listing's workflow version."""

    class Made(Aggregate.Created):
        listing_id: UUID
        buyer_id: UUID
        creator_id: UUID
        #: The creator's workflow the listing offers, and the buyer's copy of it.
        source_workflow_id: UUID
        workflow_id: UUID
        version: int
        title: str
        description: str
        #: What the buyer paid, in units, and how it was split (``fee + earning == price``).
        price: int
        fee: int
        earning: int
        fee_rate: str

    class Upgraded(Aggregate.Event):
        """The copy moved to a newer version the listing offers (free)."""

        version: int
        previous: int

        def apply(self, aggregate: Any) -> None:
            install: Install = aggregate
            install.workflow_version = self.version

    class Refunded(Aggregate.Event):
        """The price goes back to the buyer; the earning and the fee are clawed back."""

        reason: str
        refunded_by: UUID

        def apply(self, aggregate: Any) -> None:
            install: Install = aggregate
            install.status = "refunded"

    def __init__(
        self,
        listing_id: UUID,
        buyer_id: UUID,
        creator_id: UUID,
        source_workflow_id: UUID,
        workflow_id: UUID,
        version: int,
        title: str,
        description: str,
        price: int,
        fee: int,
        earning: int,
        fee_rate: str,
    ) -> None:
        self.listing_id, self.buyer_id, self.creator_id = listing_id, buyer_id, creator_id
        self.source_workflow_id, self.workflow_id = source_workflow_id, workflow_id
        #: The installed version of the workflow (``version`` is the aggregate's own).
        self.workflow_version, self.title, self.description = version, title, description
        self.price, self.fee, self.earning, self.fee_rate = price, fee, earning, fee_rate
        self.status: InstallStatus = "installed"

    @classmethod
    def make(
        cls,
        listing: Listing,
        buyer_id: UUID,
        version: int,
        price: int,
        fee_rate: Decimal,
    ) -> Install:
        """The install of ``listing`` by ``buyer_id`` at ``version``, paid ``price``."""
        install_id = install_id_for(buyer_id, listing.id)
        fee, earning = split_price(price, fee_rate)
        return cls._create(
            cls.Made,
            id=install_id,
            listing_id=listing.id,
            buyer_id=buyer_id,
            creator_id=listing.creator_id,
            source_workflow_id=listing.workflow_id,
            workflow_id=installed_copy_id(install_id),
            version=version,
            title=listing.title,
            description=listing.description,
            price=price,
            fee=fee,
            earning=earning,
            fee_rate=str(fee_rate),
        )

    @property
    def cause(self) -> Cause:
        return install_cause(self.id)

    def upgrade(self, version: int) -> bool:
        """Moves to ``version`` if it is newer; ``False`` when already there."""
        if version <= self.workflow_version:
            return False
        self.trigger_event(self.Upgraded, version=version, previous=self.workflow_version)
        return True

    def refund(self, reason: str, refunded_by: UUID) -> None:
        if self.status == "refunded":
            raise AlreadyRefunded(f"install {self.id} was already refunded")
        self.trigger_event(self.Refunded, reason=reason, refunded_by=refunded_by)
