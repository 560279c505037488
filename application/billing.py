"""The billing context: credit accounts and their ledger.

Every method is a use case: load, call the aggregate, save once. Commands are retried on an
optimistic-concurrency conflict (see :mod:`application.retry`); reactions to other contexts'
events are saved with a tracking record so a redelivery records nothing new.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Tracking

from application.base import PixevoApplication, command
from application.errors import AccountNotFound as AccountNotFound
from application.logs import topic_of
from domain.billing import CreditAccount
from domain.credits import Cause, account_id_for, hold_id_for
from domain.earnings import EarningItem, EarningsPosition
from domain.earnings import replay as replay_earnings
from domain.ledger import AccountPosition, LedgerEntry, entry_id, replay
from domain.marketplace import PLATFORM_ACCOUNT_HOLDER


@dataclass(frozen=True, slots=True)
class Payout:
    """What one sale pays out, in units: ``earning`` to the seller, ``fee`` to the platform,
    both with ``cause`` (the sale). ``price`` (= earning + fee) is what the buyer paid."""

    cause: Cause
    buyer_id: UUID
    seller_id: UUID
    price: int
    earning: int
    fee: int


class BillingApplication(PixevoApplication):
    name = "billing"
    snapshotting_intervals: ClassVar = {CreditAccount: CreditAccount.snapshot_every}

    # -- commands --------------------------------------------------------------------------

    @command
    def open_account(self, user_id: UUID) -> UUID:
        account_id = account_id_for(user_id)
        try:
            self.repository.get(account_id)
        except AggregateNotFoundError:
            self.save(CreditAccount.open(user_id))
        return account_id

    @command
    def deposit(
        self, user_id: UUID, kind: str, amount: int, cause: Cause, reason: str = ""
    ) -> LedgerEntry | None:
        """Adds credits; returns the new ledger entry, or ``None`` if this cause already paid in."""
        account = self._account_or_open(user_id)
        if not account.deposit(kind, amount, cause, reason):
            return None
        deposited = account.pending_events[-1]
        self.save(account)
        return LedgerEntry(
            id=entry_id(account.id, account.version),
            account_id=account.id,
            at=deposited.timestamp,
            kind=kind,
            amount=amount,
            balance_after=account.balance,
            available_after=account.available,
            cause=cause,
            hold_id=None,
            version=account.version,
        )

    @command
    def place_hold(self, user_id: UUID, amount: int, cause: Cause) -> UUID:
        account = self.load_account(user_id)
        hold_id = account.place_hold(amount, cause)
        self.save(account)
        return hold_id

    @command
    def capture(self, user_id: UUID, hold_id: UUID, amount: int) -> bool:
        account = self.load_account(user_id)
        captured = account.capture(hold_id, amount)
        self.save(account)
        return captured

    @command
    def release(self, user_id: UUID, hold_id: UUID) -> bool:
        account = self.load_account(user_id)
        released = account.release(hold_id)
        self.save(account)
        return released

    @command
    def release_cause(self, user_id: UUID, cause: Cause) -> bool:
        """Releases the hold this cause placed, if it is open; a no-op otherwise."""
        account = self.load_account(user_id)
        hold_id = hold_id_for(cause)
        if str(hold_id) not in account.holds:
            return False
        account.release(hold_id)
        self.save(account)
        return True

    @command
    def place_hold_for(self, tracking: Tracking, user_id: UUID, amount: int, cause: Cause) -> bool:
        """A reaction: places the hold and records ``tracking`` in the same transaction."""
        account = self.load_account(user_id)
        account.place_hold(amount, cause)
        return self.save_tracked(tracking, account)

    @command
    def settle_parts(
        self, tracking: Tracking, user_id: UUID, hold_id: UUID, parts: Mapping[Cause, int]
    ) -> bool:
        """A reaction: spends each part of a shared hold on its own cause (a ledger entry
        each), then releases the rest; recorded with ``tracking``, once. A hold never placed
        (nothing was held) records the tracking only."""
        if self.already_processed(tracking):
            return False
        account = self.load_account(user_id)
        if str(hold_id) in account.holds:
            for cause, amount in parts.items():
                if amount > 0:
                    account.draw(hold_id, amount, cause)
            account.release(hold_id)
        return self.save_tracked(tracking, account)

    @command
    def spend(
        self, user_id: UUID, amount: int, cause: Cause, detail: dict[str, str]
    ) -> tuple[int, bool]:
        """Pays ``amount`` for ``cause`` now, once per cause: ``(what was paid for it, whether
        this call paid it)``. Raises ``InsufficientCredits`` (nothing recorded)."""
        account = self.load_account(user_id)
        paid = account.spend(amount, cause, detail)
        paid_now = bool(account.pending_events)
        self.save(account)
        return paid, paid_now

    @command
    def pay_out(self, payouts: Sequence[Payout]) -> int:
        """Credits every payout's earning to its seller and fee to the platform, in one
        transaction (a seller or the platform is written once however many sales it has);
        each cause is deposited once, so a payout paid before records nothing. Returns how
        many deposits were made."""
        accounts: dict[UUID, CreditAccount] = {}
        made = 0
        for payout in payouts:
            made += self._pay(accounts, payout)
        self.save(*accounts.values())
        return made

    @command
    def refund(self, payout: Payout, reason: str) -> bool:
        """Reverses a payout, once: the buyer gets the price back, the seller's earning and the
        platform's fee are clawed back (what cannot be taken now is owed). A payout not yet
        paid is paid first, so the clawback always follows the earning it takes back."""
        accounts: dict[UUID, CreditAccount] = {}
        self._pay(accounts, payout)
        buyer = self._cached(accounts, payout.buyer_id)
        refunded = False
        if payout.price:
            refunded = buyer.deposit("refund", payout.price, payout.cause, reason)
        for holder, amount in (
            (payout.seller_id, payout.earning),
            (PLATFORM_ACCOUNT_HOLDER, payout.fee),
        ):
            if amount:
                refunded = (
                    self._cached(accounts, holder).claw_back(amount, payout.cause) or refunded
                )
        self.save(*accounts.values())
        return refunded

    def _pay(self, accounts: dict[UUID, CreditAccount], payout: Payout) -> int:
        made = 0
        for holder, amount, reason in (
            (payout.seller_id, payout.earning, "marketplace sale"),
            (PLATFORM_ACCOUNT_HOLDER, payout.fee, "platform fee"),
        ):
            if amount and self._cached(accounts, holder).deposit(
                "earning", amount, payout.cause, reason
            ):
                made += 1
        return made

    def _cached(self, accounts: dict[UUID, CreditAccount], user_id: UUID) -> CreditAccount:
        if user_id not in accounts:
            accounts[user_id] = self._account_or_open(user_id)
        return accounts[user_id]

    # -- queries over the event store (audit, replay) ---------------------------------------

    def position(
        self, user_id: UUID, at: datetime | None = None, version: int | None = None
    ) -> AccountPosition:
        return self.history(user_id, at, version)[0]

    def history(
        self, user_id: UUID, at: datetime | None = None, version: int | None = None
    ) -> tuple[AccountPosition, list[LedgerEntry]]:
        """The account's position and ledger entries, replayed from its stored events.

        ``at`` stops at an instant, ``version`` at an event (for comparing with a projection
        that has got that far).
        """
        account_id = account_id_for(user_id)
        events = list(self.events.get(account_id, lte=version))
        if not events:
            raise AccountNotFound(f"no credit account for user {user_id}")
        return replay(account_id, events, until=at)

    def earnings(
        self, user_id: UUID, at: datetime | None = None, version: int | None = None
    ) -> tuple[EarningsPosition, list[EarningItem]]:
        """What the account's holder earned from sales, replayed from its stored events
        (``at`` and ``version`` stop early, as for :meth:`history`)."""
        account_id = account_id_for(user_id)
        events = list(self.events.get(account_id, lte=version))
        if not events:
            raise AccountNotFound(f"no credit account for user {user_id}")
        return replay_earnings(account_id, events, until=at)

    def account_user_ids(self) -> Iterator[UUID]:
        """Every account holder, in the order their accounts were opened."""
        topic = topic_of(CreditAccount.Opened)
        start = 1
        while True:
            batch = self.recorder.select_notifications(start, 500, topics=[topic])
            for notification in batch:
                event = self.decode(notification)
                if isinstance(event, CreditAccount.Opened):
                    yield event.user_id
            if len(batch) < 500:
                return
            start = batch[-1].id + 1

    # -- helpers ---------------------------------------------------------------------------

    def load_account(self, user_id: UUID) -> CreditAccount:
        try:
            return self.load(account_id_for(user_id), CreditAccount)
        except AggregateNotFoundError:
            raise AccountNotFound(f"no credit account for user {user_id}") from None

    def _account_or_open(self, user_id: UUID) -> CreditAccount:
        try:
            return self.load(account_id_for(user_id), CreditAccount)
        except AggregateNotFoundError:
            return CreditAccount.open(user_id)
