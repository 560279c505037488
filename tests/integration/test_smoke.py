from __future__ import annotations

from domain.credits import to_units
from interfaces.bootstrap import Container


def test_user_funded_and_projected(container: Container) -> None:
    created = container.users.create("ada@example.com", credits=10)
    runner = container.projection("ledger")
    runner.catch_up()
    with container.pool.connection() as conn:
        row = conn.execute(
            "SELECT balance, available FROM proj_ledger.credit_balances WHERE user_id = %s",
            [created.user_id],
        ).fetchone()
    assert row is not None
    assert to_units(row[0]) == to_units(10)
