"""The marketplace's commands on real PostgreSQL, without workers: an install paid once under
concurrency, payouts combined without losing or doubling one, a refund reversing all three
movements, and an install finished from the payment alone when its request stopped."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import Tracking

from application.billing import Payout
from application.marketplace import payout_of
from application.marketplace_reactions import PayOutInstall, RecordInstall
from domain.billing import CreditAccount
from domain.credits import Cause, to_units
from domain.errors import InsufficientCredits
from domain.marketplace import (
    PLATFORM_ACCOUNT_HOLDER,
    Install,
    OwnListing,
    install_cause,
    install_id_for,
)
from interfaces.bootstrap import Container

pytestmark = pytest.mark.integration

GRAPH: dict[str, Any] = {
    "inputs": {"image": {"type": "image"}},
    "nodes": [{"id": "g", "op": "grayscale", "inputs": {"image": "$inputs.image"}}],
    "outputs": {"out": "$nodes.g"},
}


def user(container: Container, email: str, credits: str) -> UUID:
    return container.users.create(email, credits).user_id


def listed(container: Container, creator: UUID, price: str) -> UUID:
    workflow = container.workflows.create_workflow(creator, "gray")
    container.workflows.add_version(creator, workflow["id"], GRAPH)
    made = container.marketplace.create_listing(
        creator, workflow["id"], 1, "Gray", "makes it gray", to_units(price)
    )
    return UUID(str(made["id"]))


def spends(container: Container, user_id: UUID) -> list[int]:
    return [e.amount for e in container.billing.history(user_id)[1] if e.kind == "spend"]


def test_concurrent_installs_by_one_buyer_pay_once(container: Container) -> None:
    creator = user(container, "c@example.com", "0")
    buyer = user(container, "b@example.com", "10")
    listing = listed(container, creator, "3")
    with pytest.raises(OwnListing):
        container.marketplace.install(creator, listing)
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: container.marketplace.install(buyer, listing), range(10)))
    assert sum(made for _, made in results) == 1
    assert {doc["install_id"] for doc, _ in results} == {install_id_for(buyer, listing)}
    assert spends(container, buyer) == [to_units(3)]
    copy = container.workflows.template(buyer, results[0][0]["workflow_id"])
    assert copy.source == {
        "listing_id": str(listing),
        "install_id": str(install_id_for(buyer, listing)),
        "version": 1,
    }


def test_a_buyer_who_cannot_pay_gets_nothing_recorded(container: Container) -> None:
    creator = user(container, "c2@example.com", "0")
    buyer = user(container, "poor@example.com", "1")
    listing = listed(container, creator, "2")
    version = container.billing.load_account(buyer).version
    with pytest.raises(InsufficientCredits):
        container.marketplace.install(buyer, listing)
    assert container.billing.load_account(buyer).version == version
    assert container.marketplace._install_or_none(install_id_for(buyer, listing)) is None


def test_combined_payouts_credit_each_sale_exactly_once(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    seller = user(container, "seller@example.com", "0")
    saves: list[int] = []
    pay_out = container.billing.pay_out

    def counted(batch: list[Payout]) -> int:
        saves.append(len(batch))
        return pay_out(batch)

    monkeypatch.setattr(container.billing, "pay_out", counted)
    reaction = PayOutInstall(container.billing)
    payouts = [
        Payout(Cause("install", f"sale-{i}"), seller, seller, 10_000, 8_000, 2_000)
        for i in range(64)
    ]

    def pay(item: tuple[int, Payout]) -> None:
        i, payout = item
        event = Install.Made(
            originator_id=UUID(int=i + 1),
            originator_version=1,
            timestamp=Install.Made.create_timestamp(),
            originator_topic="domain.marketplace:Install",
            listing_id=UUID(int=0),
            buyer_id=seller,
            creator_id=seller,
            source_workflow_id=UUID(int=0),
            workflow_id=UUID(int=0),
            version=1,
            title="t",
            description="",
            price=payout.price,
            fee=payout.fee,
            earning=payout.earning,
            fee_rate="0.2",
        )
        reaction.handle(event, Tracking("marketplace", i + 1))

    platform_before = _balance(container, PLATFORM_ACCOUNT_HOLDER)
    items = list(enumerate(payouts))
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(pay, items + items))  # every message delivered twice, concurrently
    account = container.billing.load_account(seller)
    assert account.balance == 64 * 8_000
    assert _balance(container, PLATFORM_ACCOUNT_HOLDER) - platform_before == 64 * 2_000
    # 128 messages, far fewer saves: the hot accounts were written in batches
    assert sum(saves) == 128
    assert len(saves) < 64, saves


def _balance(container: Container, holder: UUID) -> int:
    try:
        return container.billing.load_account(holder).balance
    except LookupError:
        return 0


def test_a_refund_reverses_all_three_and_a_spent_earning_is_owed(container: Container) -> None:
    creator = user(container, "spent@example.com", "0")
    buyer = user(container, "refund@example.com", "10")
    listing = listed(container, creator, "10")
    doc, _ = container.marketplace.install(buyer, listing)
    install = container.marketplace.installed(doc["install_id"])
    container.billing.pay_out([payout_of(install)])
    container.billing.place_hold(creator, to_units(5), Cause("generation", "elsewhere"))
    platform_before = _balance(container, PLATFORM_ACCOUNT_HOLDER)
    container.marketplace.refund(buyer, install.id, "broken")
    assert container.billing.load_account(buyer).balance == to_units(10)
    seller = container.billing.load_account(creator)
    assert seller.available == 0 and seller.owed == to_units(5)
    assert platform_before - _balance(container, PLATFORM_ACCOUNT_HOLDER) == to_units(2)
    # the refund's money again (the reaction after the request): nothing twice
    assert not container.billing.refund(payout_of(install), "broken")
    assert container.billing.load_account(creator).owed == to_units(5)


def test_an_install_is_finished_from_its_payment_when_the_request_stopped(
    container: Container,
) -> None:
    creator = user(container, "c3@example.com", "0")
    buyer = user(container, "crash@example.com", "10")
    listing = listed(container, creator, "4")
    install_id = install_id_for(buyer, listing)
    # the request paid, then died before recording the install
    container.billing.spend(
        buyer,
        to_units(4),
        install_cause(install_id),
        {"listing_id": str(listing), "version": "1", "buyer_id": str(buyer)},
    )
    recorder = container.billing.recorder
    (spent,) = [
        n for n in recorder.select_notifications(1, 1000) if n.topic.endswith("CreditAccount.Spent")
    ]
    event = container.billing.decode(spent)
    assert isinstance(event, CreditAccount.Spent)
    assert RecordInstall(container.marketplace).handle(event, Tracking("billing", spent.id))
    install = container.marketplace.installed(install_id)
    assert (install.price, install.workflow_version, install.status) == (
        to_units(4),
        1,
        "installed",
    )
    # the buyer asking again gets the same install, charged once
    doc, made = container.marketplace.install(buyer, listing)
    assert (doc["install_id"], made) == (install_id, False)
    assert spends(container, buyer) == [to_units(4)]
