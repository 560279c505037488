"""The earnings view of a credit account's events: what its holder earned from sales.

A pure fold shared by the audit tool (replaying the event store) and the earnings projection
(building read tables), like :mod:`domain.ledger`, so both tell a creator the same story.

Only the events of selling count: an ``earning`` deposit (a sale's share), a clawback (a refunded
sale taken back: what was available at once, the rest ``owed``) and a debt settled (part of what
was owed, paid from a later earning). Every other event of the account leaves the position as
it was, so an account that never sold anything has no earnings at all.

Each movement is an item. Earning items add to the total and clawback items (the whole amount
clawed back, taken now or owed) take from it, so the items always add up to the total; a
settled item only moves an amount from owed to clawed back and changes the total by nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import NAMESPACE_OID, UUID, uuid5

from domain.billing import CreditAccount
from domain.credits import Cause, format_credits
from domain.ledger import events_until

EARNING = "earning"


@dataclass(frozen=True, slots=True)
class EarningItem:
    id: UUID
    account_id: UUID
    at: datetime
    kind: str  # earning | clawback | settled
    amount: int  # units, always positive: ``kind`` says which way it counts
    cause: Cause
    version: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class EarningsPosition:
    """Where an account's earnings stand after some prefix of its events."""

    account_id: UUID
    user_id: UUID | None = None
    #: The sum of the earning deposits.
    earned: int = 0
    #: What refunds took back: clawbacks taken at once, and debts settled since.
    clawed_back: int = 0
    #: What refunds have still to take back (settled from the next earnings).
    owed: int = 0
    #: Earning deposits (sales paid out) and clawbacks (sales refunded).
    installs: int = 0
    refunds: int = 0
    #: The account's last event that counted here (0: none has).
    version: int = 0
    updated_at: datetime | None = None

    @property
    def total(self) -> int:
        return self.earned - self.clawed_back - self.owed

    @property
    def has_earnings(self) -> bool:
        return self.version > 0


def item_id(account_id: UUID, version: int) -> UUID:
    return uuid5(NAMESPACE_OID, f"earnings:{account_id}:{version}")


def apply(position: EarningsPosition, event: object) -> tuple[EarningsPosition, list[EarningItem]]:
    """The position after ``event`` and the item it makes (none for any other event)."""
    if isinstance(event, CreditAccount.Opened):
        return replace(position, user_id=event.user_id), []
    if not isinstance(event, CreditAccount.Event):
        return position, []
    moved = _movement(position, event)
    if moved is None:
        return position, []
    after, kind, amount, cause, note = moved
    version, at = event.originator_version, event.timestamp
    after = replace(after, version=version, updated_at=at)
    account_id = event.originator_id
    item = EarningItem(
        item_id(account_id, version), account_id, at, kind, amount, cause, version, note
    )
    return after, [item]


Movement = tuple[EarningsPosition, str, int, Cause, str | None]


def _movement(p: EarningsPosition, event: CreditAccount.Event) -> Movement | None:
    if isinstance(event, CreditAccount.Deposited) and event.kind == EARNING:
        cause = Cause(event.cause_type, event.cause_id)
        earned = replace(p, earned=p.earned + event.amount, installs=p.installs + 1)
        return earned, "earning", event.amount, cause, event.reason or None
    if isinstance(event, CreditAccount.ClawedBack):
        cause = Cause(event.cause_type, event.cause_id)
        note = f"{format_credits(event.owed)} owed" if event.owed else None
        clawed = replace(
            p,
            clawed_back=p.clawed_back + event.taken,
            owed=p.owed + event.owed,
            refunds=p.refunds + 1,
        )
        return clawed, "clawback", event.amount, cause, note
    if isinstance(event, CreditAccount.DebtSettled):
        cause = Cause(event.cause_type, event.cause_id)
        note = f"owed, paid from {Cause(event.by_type, event.by_id)}"
        settled = replace(p, clawed_back=p.clawed_back + event.amount, owed=p.owed - event.amount)
        return settled, "settled", event.amount, cause, note
    return None


def replay(
    account_id: UUID, events: Iterable[object], until: datetime | None = None
) -> tuple[EarningsPosition, list[EarningItem]]:
    """Folds an account's events (optionally only those up to ``until``) into its earnings."""
    position = EarningsPosition(account_id)
    items: list[EarningItem] = []
    for event in events_until(events, until):
        position, made = apply(position, event)
        items.extend(made)
    return position, items
