"""The marketplace's request and response bodies (API.md, Marketplace)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from domain.credits import to_units
from interfaces.http.dto import Credits, WholeCredits

Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=5000)]
Version = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class CreateListing(msgspec.Struct, forbid_unknown_fields=True):
    workflow_id: UUID
    version: Version
    title: Title
    description: Text = ""
    price_credits: Credits | WholeCredits = "0"


class UpdateListing(msgspec.Struct, forbid_unknown_fields=True):
    title: Title | None = None
    description: Text | None = None
    #: The price of future installs; installs made keep the price they paid.
    price_credits: Credits | WholeCredits | None = None


class OfferVersion(msgspec.Struct, forbid_unknown_fields=True):
    version: Version


class Refund(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class ListingView(msgspec.Struct):
    id: UUID
    workflow_id: UUID
    version: int
    title: str
    description: str
    price_credits: str
    creator_id: UUID
    status: Literal["listed", "unlisted"]
    installs: int
    created_at: datetime
    updated_at: datetime


class ListingList(msgspec.Struct):
    items: list[ListingView]
    next_cursor: str | None


class InstallView(msgspec.Struct):
    install_id: UUID
    listing_id: UUID
    workflow_id: UUID
    version: int
    price_credits: str
    created_at: datetime
    status: Literal["installed", "refunded"] = "installed"


class InstalledView(InstallView):
    """An install in the buyer's list: whether the listing offers a newer version."""

    update_available: bool = False
    offered_version: int | None = None


class InstallList(msgspec.Struct):
    items: list[InstalledView]
    next_cursor: str | None


class EarningItem(msgspec.Struct):
    install_id: str
    kind: Literal["earning", "clawback", "settled"]
    amount_credits: str
    at: datetime
    note: str | None = None


class EarningsView(msgspec.Struct):
    """What the caller earned from installs: ``total_credits`` is net of clawbacks and of
    what is still ``owed``."""

    total_credits: str
    earned_credits: str
    clawed_back_credits: str
    owed_credits: str
    installs: int
    refunds: int
    items: list[EarningItem]
    next_cursor: str | None


def units_of(credits: str | int) -> int:
    return to_units(str(credits))


def credits(amount: Decimal | str) -> str:
    """A read model's numeric, or the write side's string already formatted, as the API's
    decimal string."""
    return amount if isinstance(amount, str) else f"{amount:.4f}"


def listing_view(doc: dict[str, Any]) -> ListingView:
    return ListingView(
        id=doc["id"],
        workflow_id=doc["workflow_id"],
        version=doc["version"],
        title=doc["title"],
        description=doc["description"],
        price_credits=credits(doc["price_credits"]),
        creator_id=doc["creator_id"],
        status=doc["status"],
        installs=doc["installs"],
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def install_view(doc: dict[str, Any]) -> InstallView:
    return InstallView(**_install_fields(doc))


def installed_view(doc: dict[str, Any]) -> InstalledView:
    return InstalledView(
        **_install_fields(doc),
        update_available=doc["update_available"],
        offered_version=doc["offered_version"],
    )


def _install_fields(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "install_id": doc["install_id"],
        "listing_id": doc["listing_id"],
        "workflow_id": doc["workflow_id"],
        "version": doc["version"],
        "price_credits": credits(doc["price_credits"]),
        "created_at": doc["created_at"],
        "status": doc["status"],
    }


def earnings_view(found: dict[str, Any]) -> EarningsView:
    return EarningsView(
        total_credits=credits(found["total_credits"]),
        earned_credits=credits(found["earned"]),
        clawed_back_credits=credits(found["clawed_back"]),
        owed_credits=credits(found["owed"]),
        installs=found["installs"],
        refunds=found["refunds"],
        items=[
            EarningItem(
                install_id=item["cause_id"],
                kind=item["kind"],
                amount_credits=credits(item["amount"]),
                at=item["at"],
                note=item.get("note"),
            )
            for item in found["items"]
        ],
        next_cursor=found["next_cursor"],
    )
