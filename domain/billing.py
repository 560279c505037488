"""The billing context's aggregate: one ``CreditAccount`` per user.

Invariant, after every event: ``available = balance - held >= 0``.

Every movement names its cause. A hold's id derives from its cause, and a deposit is recorded
once per cause, so a repeated command (a redelivered message, a retried request) finds the
movement already made and records nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, TypedDict
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.credits import Cause, account_id_for, check_movement, hold_id_for
from domain.errors import HoldClosed, InsufficientCredits, InvalidAmount, UnknownHold

#: Kinds of deposit, as they appear in the ledger.
DEPOSIT_KINDS = frozenset({"grant", "purchase", "earning", "refund"})


class OpenHold(TypedDict):
    amount: int
    cause_type: str
    cause_id: str
    placed_at: datetime


class CreditAccount(Aggregate):
    """A user's credits: deposits raise the balance, holds reserve part of it, captures spend."""

    snapshot_every: ClassVar[int] = 100

    class Opened(Aggregate.Created):
        user_id: UUID

    class Deposited(Aggregate.Event):
        """v2 added ``reason`` (v1 deposits, stored before it existed, read as ``""``)."""

        class_version = 2
        kind: str
        amount: int
        cause_type: str
        cause_id: str
        reason: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["reason"] = ""

        def apply(self, aggregate: Any) -> None:
            account: CreditAccount = aggregate
            account.balance += self.amount
            account.deposit_causes[f"{self.cause_type}:{self.cause_id}"] = self.kind

    class HoldPlaced(Aggregate.Event):
        hold_id: UUID
        amount: int
        cause_type: str
        cause_id: str

        def apply(self, aggregate: Any) -> None:
            account: CreditAccount = aggregate
            account.holds[str(self.hold_id)] = OpenHold(
                amount=self.amount,
                cause_type=self.cause_type,
                cause_id=self.cause_id,
                placed_at=self.timestamp,
            )

    class HoldCaptured(Aggregate.Event):
        """``amount`` is spent; ``released`` (the rest of the hold) goes back to available."""

        hold_id: UUID
        amount: int
        released: int
        #: Why it was settled so, where a policy decided (events stored before it read None).
        note: str | None = None

        def apply(self, aggregate: Any) -> None:
            account: CreditAccount = aggregate
            del account.holds[str(self.hold_id)]
            account.balance -= self.amount
            account.closed_holds[str(self.hold_id)] = "captured"

    class HoldDrawn(Aggregate.Event):
        """Part of an open hold is spent on ``cause`` (one node of a workflow run); the hold
        stays open with the rest."""

        hold_id: UUID
        amount: int
        cause_type: str
        cause_id: str

        def apply(self, aggregate: Any) -> None:
            account: CreditAccount = aggregate
            account.holds[str(self.hold_id)]["amount"] -= self.amount
            account.balance -= self.amount

    class HoldReleased(Aggregate.Event):
        hold_id: UUID
        amount: int
        note: str | None = None

        def apply(self, aggregate: Any) -> None:
            account: CreditAccount = aggregate
            del account.holds[str(self.hold_id)]
            account.closed_holds[str(self.hold_id)] = "released"

    def __init__(self, user_id: UUID) -> None:
        self.user_id = user_id
        self.balance = 0
        self.holds: dict[str, OpenHold] = {}
        self.closed_holds: dict[str, str] = {}
        self.deposit_causes: dict[str, str] = {}

    @classmethod
    def open(cls, user_id: UUID) -> CreditAccount:
        return cls._create(cls.Opened, id=account_id_for(user_id), user_id=user_id)

    # -- queries -------------------------------------------------------------------------------

    @property
    def held(self) -> int:
        return sum(hold["amount"] for hold in self.holds.values())

    @property
    def available(self) -> int:
        return self.balance - self.held

    # -- commands ------------------------------------------------------------------------------

    def deposit(self, kind: str, amount: int, cause: Cause, reason: str = "") -> bool:
        """Adds credits; ``False`` (and nothing recorded) when this cause already deposited."""
        if kind not in DEPOSIT_KINDS:
            raise InvalidAmount(f"unknown deposit kind {kind!r}")
        check_movement(amount)
        if str(cause) in self.deposit_causes:
            return False
        self.trigger_event(
            self.Deposited,
            kind=kind,
            amount=amount,
            cause_type=cause.type,
            cause_id=cause.id,
            reason=reason,
        )
        return True

    def place_hold(self, amount: int, cause: Cause) -> UUID:
        """Reserves ``amount``; the same cause always names the same hold, placed at most once."""
        check_movement(amount)
        hold_id = hold_id_for(cause)
        if str(hold_id) in self.holds or str(hold_id) in self.closed_holds:
            return hold_id
        self.check_available(amount)
        self.trigger_event(
            self.HoldPlaced,
            hold_id=hold_id,
            amount=amount,
            cause_type=cause.type,
            cause_id=cause.id,
        )
        return hold_id

    def check_available(self, amount: int) -> None:
        if amount > self.available:
            raise InsufficientCredits(requested=amount, available=self.available)

    def capture(self, hold_id: UUID, amount: int, note: str | None = None) -> bool:
        """Spends up to the held amount and releases the rest; a repeated capture is a no-op."""
        hold = self._open_hold(hold_id, closing_as="captured")
        if hold is None:
            return False
        if amount < 0 or amount > hold["amount"]:
            raise InvalidAmount(
                f"a capture must be between 0 and the held amount ({hold['amount']} units)"
            )
        self.trigger_event(
            self.HoldCaptured,
            hold_id=hold_id,
            amount=amount,
            released=hold["amount"] - amount,
            note=note,
        )
        return True

    def draw(self, hold_id: UUID, amount: int, cause: Cause) -> None:
        """Spends ``amount`` of an open hold on ``cause`` (a part of what the hold is for)."""
        check_movement(amount)
        hold = self.holds.get(str(hold_id))
        if hold is None:
            raise UnknownHold(f"no open hold {hold_id} on this account")
        if amount > hold["amount"]:
            raise InvalidAmount(f"a draw may not exceed what is held ({hold['amount']} units)")
        self.trigger_event(
            self.HoldDrawn,
            hold_id=hold_id,
            amount=amount,
            cause_type=cause.type,
            cause_id=cause.id,
        )

    def release(self, hold_id: UUID, note: str | None = None) -> bool:
        """Gives the whole hold back; a repeated release is a no-op."""
        hold = self._open_hold(hold_id, closing_as="released")
        if hold is None:
            return False
        self.trigger_event(self.HoldReleased, hold_id=hold_id, amount=hold["amount"], note=note)
        return True

    def _open_hold(self, hold_id: UUID, closing_as: str) -> OpenHold | None:
        key = str(hold_id)
        if key in self.holds:
            return self.holds[key]
        closed = self.closed_holds.get(key)
        if closed is None:
            raise UnknownHold(f"no hold {hold_id} on this account")
        if closed != closing_as:
            raise HoldClosed(f"hold {hold_id} was already {closed}")
        return None
