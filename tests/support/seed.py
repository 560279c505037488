"""Seeding the billing event store with a realistic mix of movements, quickly."""

from __future__ import annotations

import random
from uuid import UUID, uuid4

from application.billing import BillingApplication
from domain.billing import CreditAccount
from domain.credits import Cause, account_id_for, to_units


def seed_ledger(billing: BillingApplication, users: int, rounds: int, seed: int = 7) -> list[UUID]:
    """``users`` accounts, each with a grant then ``rounds`` of hold + capture/release/deposit.

    Every round saves all accounts in one transaction, so thousands of events take a second.
    Returns the user ids.
    """
    rng = random.Random(seed)
    user_ids = [uuid4() for _ in range(users)]
    accounts = [CreditAccount.open(u) for u in user_ids]
    for account in accounts:
        account.deposit("grant", to_units(1000), Cause("signup", str(account.user_id)))
    billing.save(*accounts)
    for r in range(rounds):
        accounts = [billing.load(account_id_for(u), CreditAccount) for u in user_ids]
        for account in accounts:
            cause = Cause("generation", f"{account.user_id}:{r}")
            hold = account.place_hold(to_units(rng.randint(1, 20)), cause)
            outcome = rng.random()
            if outcome < 0.6:
                account.capture(hold, rng.randint(0, account.holds[str(hold)]["amount"]))
            elif outcome < 0.8:
                account.release(hold)
            if rng.random() < 0.1:
                account.deposit("purchase", to_units(rng.randint(1, 50)), Cause("order", f"{r}"))
        billing.save(*accounts)
    return user_ids
