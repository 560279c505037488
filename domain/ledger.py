"""The ledger view of a credit account's events.

A pure fold shared by the audit tool (replaying the event store) and the ledger projection
(building read tables), so both tell the same story: each movement becomes a ledger entry with
the balance and the available credits right after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import NAMESPACE_OID, UUID, uuid5

from domain.billing import CreditAccount
from domain.credits import Cause, format_credits


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    id: UUID
    account_id: UUID
    at: datetime
    kind: str  # grant | purchase | earning | refund | spend | clawback | hold | capture | release
    amount: int  # units, always positive: ``kind`` says which way it moved
    balance_after: int
    available_after: int
    cause: Cause
    hold_id: UUID | None
    version: int
    note: str | None = None  # why a hold was settled so, where a policy decided


@dataclass(frozen=True, slots=True)
class OpenHoldView:
    id: UUID
    amount: int
    cause: Cause
    placed_at: datetime


@dataclass(frozen=True, slots=True)
class AccountPosition:
    """Where an account stands after some prefix of its events."""

    account_id: UUID
    user_id: UUID | None = None
    balance: int = 0
    holds: dict[UUID, OpenHoldView] = field(default_factory=dict)
    #: What clawbacks could not take yet, by the cause clawed back (oldest first).
    debts: dict[Cause, int] = field(default_factory=dict)
    version: int = 0
    updated_at: datetime | None = None

    @property
    def held(self) -> int:
        return sum(hold.amount for hold in self.holds.values())

    @property
    def available(self) -> int:
        return self.balance - self.held

    @property
    def owed(self) -> int:
        return sum(self.debts.values())


def entry_id(account_id: UUID, version: int, part: str = "") -> UUID:
    return uuid5(NAMESPACE_OID, f"ledger:{account_id}:{version}{part}")


Move = tuple[str, int, Cause, UUID | None, str | None]


def _direct(
    event: object, debts: dict[Cause, int]
) -> tuple[int, dict[Cause, int], list[Move]] | None:
    """A spend, a clawback or a debt settled: (change of balance, debts after, moves);
    ``None`` for any other event."""
    if isinstance(event, CreditAccount.Spent):
        cause = Cause(event.cause_type, event.cause_id)
        return -event.amount, debts, [("spend", event.amount, cause, None, None)]
    if isinstance(event, CreditAccount.ClawedBack):
        cause = Cause(event.cause_type, event.cause_id)
        note = None
        if event.owed:
            debts = {**debts, cause: event.owed}
            note = f"{format_credits(event.owed)} owed"
        return -event.taken, debts, [("clawback", event.taken, cause, None, note)]
    if isinstance(event, CreditAccount.DebtSettled):
        cause = Cause(event.cause_type, event.cause_id)
        left = {c: a for c, a in debts.items() if c != cause}
        if debts[cause] > event.amount:
            left = {**debts, cause: debts[cause] - event.amount}  # keeps the order
        note = f"owed, paid from {Cause(event.by_type, event.by_id)}"
        return -event.amount, left, [("clawback", event.amount, cause, None, note)]
    return None


def apply(position: AccountPosition, event: object) -> tuple[AccountPosition, list[LedgerEntry]]:
    """The position after ``event`` and the ledger entries it makes (none for ``Opened``)."""
    if isinstance(event, CreditAccount.Opened):
        return replace(
            position,
            user_id=event.user_id,
            version=event.originator_version,
            updated_at=event.timestamp,
        ), []
    if not isinstance(event, CreditAccount.Event):
        return position, []
    account_id, version, at = event.originator_id, event.originator_version, event.timestamp
    holds = dict(position.holds)
    debts = position.debts
    balance = position.balance
    moves: list[Move] = []
    direct = _direct(event, debts)
    if direct is not None:
        delta, debts, moves = direct
        balance += delta
    elif isinstance(event, CreditAccount.Deposited):
        balance += event.amount
        moves.append(
            (event.kind, event.amount, Cause(event.cause_type, event.cause_id), None, None)
        )
    elif isinstance(event, CreditAccount.HoldPlaced):
        cause = Cause(event.cause_type, event.cause_id)
        holds[event.hold_id] = OpenHoldView(event.hold_id, event.amount, cause, at)
        moves.append(("hold", event.amount, cause, event.hold_id, None))
    elif isinstance(event, CreditAccount.HoldCaptured):
        cause = holds.pop(event.hold_id).cause
        balance -= event.amount
        moves.append(("capture", event.amount, cause, event.hold_id, event.note))
        if event.released:
            moves.append(("release", event.released, cause, event.hold_id, event.note))
    elif isinstance(event, CreditAccount.HoldDrawn):
        hold = holds[event.hold_id]
        holds[event.hold_id] = replace(hold, amount=hold.amount - event.amount)
        balance -= event.amount
        cause = Cause(event.cause_type, event.cause_id)
        moves.append(("capture", event.amount, cause, event.hold_id, f"from {hold.cause}"))
    elif isinstance(event, CreditAccount.HoldReleased):
        cause = holds.pop(event.hold_id).cause
        moves.append(("release", event.amount, cause, event.hold_id, event.note))
    after = replace(
        position, balance=balance, holds=holds, debts=debts, version=version, updated_at=at
    )
    available = after.available
    entries = [
        LedgerEntry(
            id=entry_id(account_id, version, ":release" if i else ""),
            account_id=account_id,
            at=at,
            kind=kind,
            amount=amount,
            balance_after=balance,
            available_after=available,
            cause=cause,
            hold_id=hold_id,
            version=version,
            note=note,
        )
        for i, (kind, amount, cause, hold_id, note) in enumerate(moves)
    ]
    return after, entries


def replay(
    account_id: UUID, events: Iterable[object], until: datetime | None = None
) -> tuple[AccountPosition, list[LedgerEntry]]:
    """Folds an account's events (optionally only those up to ``until``) into its ledger."""
    position = AccountPosition(account_id)
    entries: list[LedgerEntry] = []
    for event in events_until(events, until):
        position, made = apply(position, event)
        entries.extend(made)
    return position, entries


def events_until(events: Iterable[object], until: datetime | None) -> Iterator[object]:
    """The events up to the instant ``until`` (all of them without it), in order."""
    for event in events:
        if until is not None and getattr(event, "timestamp", until) > until:
            return
        yield event
