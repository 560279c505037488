"""The billing context's aggregate: one ``CreditAccount`` per user.

Invariant, after every event: ``available = balance - held >= 0``.

Money taken back after it was paid out (a refunded install's earning) is *clawed back* from
what is available, never more: what cannot be taken now is a debt (``owed``), settled first
from the next earnings, oldest debt first.

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


class Debt(TypedDict):
    """What a clawback could not take yet: ``amount`` still owed for ``cause``."""

    amount: int
    cause_type: str
    cause_id: str


class OpenHold(TypedDict):
    amount: int
    cause_type: str
    cause_id: str
    placed_at: datetime


class CreditAccount(Aggregate):
    """A user's credits: deposits raise the balance, holds reserve part of it, captures spend."""

    snapshot_every: ClassVar[int] = 100
    #: v2 added spending, clawbacks and debts (v1 snapshots had none).
    class_version: ClassVar[int] = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state.update(spent_causes={}, clawback_causes={}, debts={})

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

    class Spent(Aggregate.Event):
        """A direct payment (an install's price), once per cause; ``detail`` says what was
        bought, enough to finish the purchase from this event alone."""

        amount: int
        cause_type: str
        cause_id: str
        detail: dict[str, str]

        def apply(self, aggregate: Any) -> None:
            account: CreditAccount = aggregate
            account.balance -= self.amount
            account.spent_causes[f"{self.cause_type}:{self.cause_id}"] = self.amount

    class ClawedBack(Aggregate.Event):
        """``amount`` paid out for ``cause`` is taken back: ``taken`` now (never more than was
        available), the rest (``owed``) becomes a debt."""

        amount: int
        taken: int
        owed: int
        cause_type: str
        cause_id: str

        def apply(self, aggregate: Any) -> None:
            account: CreditAccount = aggregate
            account.balance -= self.taken
            key = f"{self.cause_type}:{self.cause_id}"
            account.clawback_causes[key] = self.amount
            if self.owed:
                account.debts[key] = Debt(
                    amount=self.owed, cause_type=self.cause_type, cause_id=self.cause_id
                )

    class DebtSettled(Aggregate.Event):
        """Part of the debt for ``cause`` is paid from the earning deposited for ``by``."""

        amount: int
        cause_type: str
        cause_id: str
        by_type: str
        by_id: str

        def apply(self, aggregate: Any) -> None:
            account: CreditAccount = aggregate
            account.balance -= self.amount
            key = f"{self.cause_type}:{self.cause_id}"
            account.debts[key]["amount"] -= self.amount
            if account.debts[key]["amount"] == 0:
                del account.debts[key]

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
        self.spent_causes: dict[str, int] = {}
        self.clawback_causes: dict[str, int] = {}
        #: Open debts by cause, oldest first (dicts keep insertion order).
        self.debts: dict[str, Debt] = {}

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

    @property
    def owed(self) -> int:
        return sum(debt["amount"] for debt in self.debts.values())

    # -- commands ------------------------------------------------------------------------------

    def deposit(self, kind: str, amount: int, cause: Cause, reason: str = "") -> bool:
        """Adds credits; ``False`` (and nothing recorded) when this cause already deposited.

        An earning pays the account's debts first, oldest first, as far as it goes."""
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
        if kind == "earning":
            self._settle_debts(amount, cause)
        return True

    def has_deposit(self, cause: Cause) -> bool:
        return str(cause) in self.deposit_causes

    def spend(self, amount: int, cause: Cause, detail: dict[str, str]) -> int:
        """Pays ``amount`` for ``cause`` at once, if available; once per cause. Returns what
        was paid for the cause (by this call or an earlier one)."""
        check_movement(amount)
        paid = self.spent_causes.get(str(cause))
        if paid is not None:
            return paid
        self.check_available(amount)
        self.trigger_event(
            self.Spent, amount=amount, cause_type=cause.type, cause_id=cause.id, detail=detail
        )
        return amount

    def claw_back(self, amount: int, cause: Cause) -> bool:
        """Takes back ``amount`` paid out for ``cause``, once: what is available now, the rest
        owed. ``False`` (nothing recorded) when it was clawed back before."""
        check_movement(amount)
        if str(cause) in self.clawback_causes:
            return False
        taken = max(0, min(amount, self.available))
        self.trigger_event(
            self.ClawedBack,
            amount=amount,
            taken=taken,
            owed=amount - taken,
            cause_type=cause.type,
            cause_id=cause.id,
        )
        return True

    def _settle_debts(self, amount: int, by: Cause) -> None:
        left = amount
        for debt in list(self.debts.values()):
            if left == 0:
                return
            paid = min(left, debt["amount"])
            self.trigger_event(
                self.DebtSettled,
                amount=paid,
                cause_type=debt["cause_type"],
                cause_id=debt["cause_id"],
                by_type=by.type,
                by_id=by.id,
            )
            left -= paid

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
