"""Events stored by an earlier schema version still decode (rows from tests/fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest

from domain.billing import CreditAccount
from domain.credits import Cause, to_units
from interfaces.bootstrap import Container

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parent.parent / "fixtures" / "billing_events_v1.json"
USER = UUID("6f1d2c3b-4a59-4e68-9d7c-0b1a2c3d4e5f")


def test_v1_rows_decode_replay_and_project(container: Container) -> None:
    rows = json.loads(FIXTURE.read_text())["rows"]
    assert any("reason" not in json.loads(r["state"]) for r in rows if "Deposited" in r["topic"])
    billing = container.billing  # its tables exist once the application is built
    with container.pool.connection() as conn:
        for row in rows:
            conn.execute(
                "INSERT INTO billing.billing_events (originator_id, originator_version, topic, "
                "state) VALUES (%s, %s, %s, %s)",
                [
                    row["originator_id"],
                    row["originator_version"],
                    row["topic"],
                    row["state"].encode(),
                ],
            )
    account = container.billing.repository.get(UUID(rows[0]["originator_id"]))
    assert isinstance(account, CreditAccount)
    assert (account.balance, account.available) == (to_units("12.5"), to_units("12.5"))
    position, entries = container.billing.history(USER)
    assert [e.kind for e in entries] == ["grant", "hold", "capture", "release", "purchase"]
    deposits = [
        e
        for e in container.billing.events.get(account.id)
        if isinstance(e, CreditAccount.Deposited)
    ]
    assert [d.reason for d in deposits] == ["", ""]  # upcast: v1 had no reason
    # new commands append v2 events after the v1 ones
    billing.deposit(USER, "grant", to_units(1), Cause("admin_grant", "after-upgrade"), "goodwill")
    runner = container.projection("ledger")
    runner.catch_up()
    with container.pool.connection() as conn:
        balance = conn.execute(
            "SELECT balance FROM proj_ledger.credit_balances WHERE user_id = %s", [USER]
        ).fetchone()
    assert balance is not None
    assert to_units(balance[0]) == to_units("13.5")
    assert position.version == 5
