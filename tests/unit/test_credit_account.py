from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from domain.billing import CreditAccount
from domain.credits import Cause, format_credits, hold_id_for, to_units
from domain.errors import HoldClosed, InsufficientCredits, InvalidAmount, UnknownHold


def funded(credits: int = 10) -> CreditAccount:
    account = CreditAccount.open(uuid4())
    account.deposit("grant", to_units(credits), Cause("test", "funding"))
    return account


def test_amounts_are_exact_units() -> None:
    assert to_units("2.5") == 25_000
    assert to_units(Decimal("0.0001")) == 1
    assert format_credits(25_000) == "2.5000"
    with pytest.raises(InvalidAmount):
        to_units("0.00001")
    with pytest.raises(InvalidAmount):
        to_units("NaN")
    with pytest.raises(InvalidAmount):
        to_units("lots")


def test_hold_reserves_and_capture_spends_at_most_the_hold() -> None:
    account = funded(10)
    hold = account.place_hold(to_units(4), Cause("generation", "g1"))
    assert (account.balance, account.held, account.available) == (100_000, 40_000, 60_000)
    assert account.capture(hold, to_units("2.5"))
    assert (account.balance, account.held, account.available) == (75_000, 0, 75_000)
    other = account.place_hold(to_units(1), Cause("generation", "g2"))
    with pytest.raises(InvalidAmount):
        account.capture(other, to_units(2))


def test_hold_refused_when_available_is_short() -> None:
    account = funded(10)
    account.place_hold(to_units(8), Cause("generation", "g1"))
    with pytest.raises(InsufficientCredits) as refused:
        account.place_hold(to_units(3), Cause("generation", "g2"))
    assert refused.value.available == to_units(2)
    assert account.available == to_units(2)


def test_repeated_commands_are_no_ops() -> None:
    account = funded(10)
    cause = Cause("generation", "g1")
    first = account.place_hold(to_units(4), cause)
    again = account.place_hold(to_units(4), cause)
    assert first == again == hold_id_for(cause)
    assert account.held == to_units(4)
    assert account.release(first)
    assert not account.release(first)
    assert account.place_hold(to_units(4), cause) == first  # a released cause is not re-held
    assert account.held == 0
    assert not account.deposit("grant", to_units(10), Cause("test", "funding"))
    assert account.balance == to_units(10)


def test_closed_holds_cannot_change_their_outcome() -> None:
    account = funded(10)
    hold = account.place_hold(to_units(4), Cause("generation", "g1"))
    account.capture(hold, to_units(1))
    with pytest.raises(HoldClosed):
        account.release(hold)
    with pytest.raises(UnknownHold):
        account.capture(hold_id_for(Cause("generation", "never")), 1)


def test_amounts_must_be_positive_and_bounded() -> None:
    account = funded(1)
    for bad in (0, -5, 10**30):
        with pytest.raises(InvalidAmount):
            account.deposit("grant", bad, Cause("test", str(bad)))
