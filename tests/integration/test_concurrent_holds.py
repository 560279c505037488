"""Many holds racing for the same credits: the account never goes below zero."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from application.billing import BillingApplication
from domain.credits import Cause, to_units
from domain.errors import InsufficientCredits
from infrastructure.postgres import eventstore_env
from interfaces.bootstrap import Container

pytestmark = pytest.mark.integration


def test_fifty_concurrent_holds_on_an_account_funded_for_ten(container: Container) -> None:
    user = container.users.create("race@example.com", credits=10).user_id
    # Five application instances, as in five API processes, each with its own connection pool.
    apps = [
        BillingApplication(env=eventstore_env(container.database_url, "billing", pool_size=10))
        for _ in range(5)
    ]
    start = threading.Barrier(50, timeout=60)

    def hold(i: int) -> str:
        start.wait()
        try:
            apps[i % 5].place_hold(user, to_units(1), Cause("generation", f"g{i}"))
        except InsufficientCredits:
            return "refused"
        return "held"

    with ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(hold, range(50)))
    for app in apps:
        app.close()

    assert outcomes.count("held") == 10
    assert outcomes.count("refused") == 40
    position, entries = container.billing.history(user)
    assert (position.balance, position.held, position.available) == (to_units(10), to_units(10), 0)
    assert [e.kind for e in entries].count("hold") == 10
    assert all(e.available_after >= 0 for e in entries)

    container.projection("ledger").catch_up()
    with container.pool.connection() as conn:
        balance, held, available = conn.execute(
            "SELECT balance, held, available FROM proj_ledger.credit_balances WHERE user_id = %s",
            [user],
        ).fetchone() or (None, None, None)
        kinds = dict(
            conn.execute(
                "SELECT kind, sum(amount) FROM proj_ledger.ledger_entries WHERE user_id = %s "
                "GROUP BY kind",
                [user],
            ).fetchall()
        )
        lowest = conn.execute(
            "SELECT min(available_after) FROM proj_ledger.ledger_entries WHERE user_id = %s",
            [user],
        ).fetchone()
    assert (balance, held, available) == (Decimal(10), Decimal(10), Decimal(0))
    # the entries add up to the balance: deposits - captures, and holds - releases - captures
    assert kinds == {"grant": Decimal(10), "hold": Decimal(10)}
    assert kinds["grant"] - kinds.get("capture", 0) == balance
    assert kinds["hold"] - kinds.get("release", 0) - kinds.get("capture", 0) == held
    assert lowest == (Decimal(0),)  # the last hold took the last credit, none went below


def test_capture_and_release_race_settles_the_hold_once(container: Container) -> None:
    user = container.users.create("settle@example.com", credits=5).user_id
    hold = container.billing.place_hold(user, to_units(5), Cause("generation", "g"))
    start = threading.Barrier(2, timeout=30)
    apps = [BillingApplication(env=eventstore_env(container.database_url, "billing")) for _ in "ab"]

    def capture() -> str:
        start.wait()
        try:
            apps[0].capture(user, hold, to_units(3))
        except Exception as error:  # noqa: BLE001 - the loser's error is the point
            return type(error).__name__
        return "captured"

    def release() -> str:
        start.wait()
        try:
            apps[1].release(user, hold)
        except Exception as error:  # noqa: BLE001
            return type(error).__name__
        return "released"

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(capture), pool.submit(release)]
        results = {future.result() for future in futures}
    for app in apps:
        app.close()
    assert results in ({"captured", "HoldClosed"}, {"released", "HoldClosed"})
    position = container.billing.position(user)
    assert position.held == 0
    # the capture charged 3 of the 5 held; the release gave it all back
    assert position.balance == (to_units(2) if "captured" in results else to_units(5))
