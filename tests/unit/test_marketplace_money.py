"""The money rules of the marketplace, on the aggregates: one payment per install, a clawback
never below zero with the rest owed, debts settled from the next earnings, and the ledger fold
telling the same story."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from domain.billing import CreditAccount
from domain.credits import Cause, to_units
from domain.errors import InsufficientCredits
from domain.ledger import replay
from domain.marketplace import (
    AlreadyRefunded,
    Install,
    Listing,
    ListingClosed,
    OwnListing,
    install_id_for,
    split_price,
)


def account(credits: str) -> CreditAccount:
    acc = CreditAccount.open(uuid4())
    acc.deposit("grant", to_units(credits), Cause("admin_grant", "g1"))
    return acc


def test_split_adds_up_to_the_price_to_the_unit() -> None:
    for price in (1, 3, 7, 10_000, 123_457, 99_999_999):
        fee, earning = split_price(price, Decimal("0.20"))
        assert fee + earning == price
        assert fee == int(price * Decimal("0.20"))  # rounded down to the unit
    assert split_price(10_000, Decimal("0")) == (0, 10_000)
    assert split_price(10_000, Decimal("1")) == (10_000, 0)


def test_a_spend_is_made_once_per_cause_and_never_beyond_available() -> None:
    acc = account("10")
    cause = Cause("install", "i1")
    assert acc.spend(to_units("4"), cause, {}) == to_units("4")
    assert acc.spend(to_units("4"), cause, {}) == to_units("4")  # paid before: nothing new
    assert acc.balance == to_units("6")
    with pytest.raises(InsufficientCredits):
        acc.spend(to_units("7"), Cause("install", "i2"), {})
    assert acc.balance == to_units("6")


def test_a_clawback_takes_what_is_available_and_the_rest_is_owed_then_settled() -> None:
    seller = CreditAccount.open(uuid4())
    sale = Cause("install", "sale-1")
    seller.deposit("earning", to_units("8"), sale)
    seller.place_hold(to_units("5"), Cause("generation", "g"))  # spent elsewhere, in effect
    assert seller.claw_back(to_units("8"), sale)
    assert not seller.claw_back(to_units("8"), sale)  # once per cause
    assert seller.available == 0
    assert seller.owed == to_units("5")
    # the next earning pays the debt first
    seller.deposit("earning", to_units("2"), Cause("install", "sale-2"))
    assert seller.owed == to_units("3")
    assert seller.available == 0
    seller.deposit("earning", to_units("4"), Cause("install", "sale-3"))
    assert seller.owed == 0
    assert seller.available == to_units("1")
    # a grant is not an earning: it does not pay debts
    seller.claw_back(to_units("2"), Cause("install", "sale-3"))
    owed = seller.owed
    seller.deposit("grant", to_units("1"), Cause("admin_grant", "x"))
    assert seller.owed == owed


def test_the_ledger_fold_agrees_with_the_aggregate_and_never_shows_available_below_zero() -> None:
    seller = CreditAccount.open(uuid4())
    seller.deposit("earning", to_units("8"), Cause("install", "a"))
    seller.spend(to_units("6"), Cause("install", "bought"), {})
    seller.claw_back(to_units("8"), Cause("install", "a"))
    seller.deposit("earning", to_units("10"), Cause("install", "b"))
    events = seller.collect_events()
    position, entries = replay(seller.id, events)
    assert position.balance == seller.balance
    assert position.owed == seller.owed == 0
    assert all(entry.available_after >= 0 for entry in entries)
    kinds = [(e.kind, e.amount, e.note) for e in entries]
    assert ("clawback", to_units("2"), "6.0000 owed") in kinds
    assert ("clawback", to_units("6"), "owed, paid from install:b") in kinds
    assert [e.kind for e in entries].count("earning") == 2


def test_a_listing_refuses_its_creator_and_closes_when_unlisted() -> None:
    creator, buyer = uuid4(), uuid4()
    listing = Listing.create(uuid4(), creator, uuid4(), 1, "Portrait", "soft light", 50_000)
    with pytest.raises(OwnListing):
        listing.check_installable_by(creator)
    listing.check_installable_by(buyer)
    with pytest.raises(ListingClosed):
        listing.offer_version(1)  # not newer
    listing.offer_version(2)
    listing.reprice(60_000)
    listing.describe("Portrait", "softer light")
    assert (listing.workflow_version, listing.version) == (2, 4)
    listing.unlist()
    listing.unlist()
    assert [type(e).__name__ for e in listing.collect_events()] == [
        "Created",
        "VersionOffered",
        "Repriced",
        "Described",
        "Unlisted",
    ]
    with pytest.raises(ListingClosed):
        listing.check_installable_by(buyer)


def test_an_install_records_what_a_dispute_needs_and_refunds_once() -> None:
    creator, buyer = uuid4(), uuid4()
    listing = Listing.create(uuid4(), creator, uuid4(), 3, "Portrait", "soft light", 50_000)
    install = Install.make(listing, buyer, 3, 50_000, Decimal("0.20"))
    assert install.id == install_id_for(buyer, listing.id)
    assert (install.price, install.fee, install.earning, install.workflow_version) == (
        50_000,
        10_000,
        40_000,
        3,
    )
    assert not install.upgrade(3)
    assert install.upgrade(4)
    install.refund("duplicate purchase", uuid4())
    # the installed version is the workflow's, never the aggregate's own event count
    assert (install.workflow_version, install.version) == (4, 3)
    with pytest.raises(AlreadyRefunded):
        install.refund("again", uuid4())
