"""The billing use cases on the in-memory store: same code as on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from eventsourcing.persistence import Tracking

from application.billing import AccountNotFound, BillingApplication
from domain.credits import Cause, to_units
from domain.errors import InsufficientCredits


@pytest.fixture
def billing() -> BillingApplication:
    return BillingApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def test_deposit_opens_the_account_and_returns_the_entry(billing: BillingApplication) -> None:
    user = uuid4()
    entry = billing.deposit(user, "grant", to_units(5), Cause("signup", str(user)))
    assert entry is not None
    assert (entry.kind, entry.amount, entry.balance_after) == ("grant", 50_000, 50_000)
    assert billing.deposit(user, "grant", to_units(5), Cause("signup", str(user))) is None
    assert billing.position(user).balance == to_units(5)


def test_history_replays_every_movement_and_the_past(billing: BillingApplication) -> None:
    user = uuid4()
    billing.deposit(user, "grant", to_units(10), Cause("signup", "1"))
    hold = billing.place_hold(user, to_units(4), Cause("generation", "g1"))
    middle = datetime.now(UTC)
    billing.capture(user, hold, to_units(3))
    position, entries = billing.history(user)
    assert [e.kind for e in entries] == ["grant", "hold", "capture", "release"]
    assert (position.balance, position.available) == (to_units(7), to_units(7))
    then = billing.position(user, at=middle)
    assert (then.balance, then.held, then.available) == (to_units(10), to_units(4), to_units(6))


def test_hold_refused_and_unknown_account(billing: BillingApplication) -> None:
    user = uuid4()
    billing.deposit(user, "grant", to_units(1), Cause("signup", "1"))
    with pytest.raises(InsufficientCredits):
        billing.place_hold(user, to_units(2), Cause("generation", "g"))
    with pytest.raises(AccountNotFound):
        billing.place_hold(uuid4(), 1, Cause("generation", "g"))


def test_tracked_reaction_records_once(billing: BillingApplication) -> None:
    user = uuid4()
    billing.deposit(user, "grant", to_units(10), Cause("signup", "1"))
    tracking = Tracking("generation", 7)
    assert billing.place_hold_for(tracking, user, to_units(2), Cause("generation", "g7"))
    assert not billing.place_hold_for(tracking, user, to_units(2), Cause("generation", "g7"))
    assert billing.position(user).held == to_units(2)


def test_snapshots_keep_state(billing: BillingApplication) -> None:
    user = uuid4()
    for i in range(120):
        billing.deposit(user, "grant", 1, Cause("drip", str(i)))
    assert billing.snapshots is not None
    snapshots = list(billing.snapshots.get(billing.position(user).account_id))
    assert [s.originator_version for s in snapshots] == [100]  # opened + 99 deposits
    assert billing.position(user).balance == 120
    assert list(billing.account_user_ids()) == [user]
