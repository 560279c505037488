"""Credit amounts and causes.

Credits are exact: an amount is an ``int`` of units, one unit being 1/10,000 credit, so
``Decimal("2.5")`` credits is ``25_000`` units. Nothing here ever touches a float.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from uuid import UUID, uuid5

from domain.errors import InvalidAmount

UNITS_PER_CREDIT = 10_000
#: The largest single movement accepted (one hundred million credits).
MAX_UNITS = 100_000_000 * UNITS_PER_CREDIT

_HOLD_NAMESPACE = UUID("4a8f0f5e-6c1b-4d7e-9d52-3f2a1b0c9e11")
_ACCOUNT_NAMESPACE = UUID("0b6c2f7e-90a4-4a63-8f0e-5d6c7b8a9f10")


def to_units(credits: Decimal | int | str) -> int:
    """Exact credits (``"2.5"``, ``Decimal("0.0001")``, ``3``) to units; refuses inexact ones."""
    try:
        scaled = Decimal(credits) * UNITS_PER_CREDIT
        exact = scaled.is_finite() and scaled == scaled.to_integral_value()
    except (InvalidOperation, ValueError, TypeError):
        exact = False
    if exact and abs(scaled) > MAX_UNITS * UNITS_PER_CREDIT:
        raise InvalidAmount(f"an amount may not exceed {format_credits(MAX_UNITS)} credits")
    if not exact:
        raise InvalidAmount(
            f"{credits!r} is not an amount of credits with at most 4 decimal places"
        )
    return int(scaled)


def positive_units(credits: Decimal | int | str) -> int:
    units = to_units(credits)
    check_movement(units)
    return units


def check_movement(units: int) -> None:
    if units <= 0:
        raise InvalidAmount("an amount must be positive")
    if units > MAX_UNITS:
        raise InvalidAmount(f"an amount may not exceed {format_credits(MAX_UNITS)} credits")


def to_credits(units: int) -> Decimal:
    return (Decimal(units) / UNITS_PER_CREDIT).quantize(Decimal("0.0001"))


def format_credits(units: int) -> str:
    """Units as the API's decimal string with four places: ``25000`` -> ``"2.5000"``."""
    return str(to_credits(units))


@dataclass(frozen=True, slots=True)
class Cause:
    """Why credits moved: ``Cause("generation", "<uuid>")``, ``Cause("admin_grant", "<uuid>")``."""

    type: str
    id: str

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


def hold_id_for(cause: Cause) -> UUID:
    """A hold's id derives from its cause, so a repeated command finds the same hold."""
    return uuid5(_HOLD_NAMESPACE, str(cause))


def account_id_for(user_id: UUID) -> UUID:
    return uuid5(_ACCOUNT_NAMESPACE, str(user_id))
