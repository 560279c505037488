"""The ledger projection in-process: rebuilds swap in identical tables; status reports lag.

Its exactly-once across a SIGKILLed projection process is in tests/e2e/test_projections.py.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from domain.credits import Cause, to_units
from interfaces.bootstrap import Container
from projections import admin
from tests.support.processes import wait_for
from tests.support.seed import seed_ledger

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLES = {
    "credit_balances": "account_id",
    "credit_holds": "hold_id",
    "ledger_entries": "created_at, id",
}


def contents(container: Container, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    with container.pool.connection() as conn:
        return {
            table: conn.execute(f"SELECT * FROM {schema}.{table} ORDER BY {order}").fetchall()
            for table, order in TABLES.items()
        }


def fresh_build(container: Container, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    runner = container.projection("ledger", schema=schema)
    runner.catch_up()
    return contents(container, schema)


def test_rebuild_swaps_in_identical_tables_while_events_keep_coming(container: Container) -> None:
    users = seed_ledger(container.billing, users=20, rounds=20)
    live = container.projection("ledger")
    live.catch_up()
    before = contents(container, "proj_ledger")

    fresh = container.projection("ledger", schema="proj_ledger_rebuild")
    progress: list[tuple[int, int]] = []
    admin.rebuild(live, fresh, lambda position, head: progress.append((position, head)))
    assert contents(container, "proj_ledger") == before
    assert progress
    assert progress[-1][0] == progress[-1][1]

    # A rebuild racing a live runner and new commands: the swapped-in tables miss nothing.
    stop = threading.Event()

    def keep_writing() -> None:
        i = 0
        while not stop.is_set():
            container.billing.deposit(
                users[i % len(users)], "grant", to_units(1), Cause("race", str(i))
            )
            i += 1

    writer = threading.Thread(target=keep_writing)
    runner = threading.Thread(target=live.run_forever, kwargs={"poll_interval": 0.05})
    writer.start()
    runner.start()
    try:
        admin.rebuild(live, container.projection("ledger", schema="proj_ledger_rebuild"))
    finally:
        stop.set()
        writer.join()
    head = container.billing.recorder.max_notification_id()
    assert wait_for(lambda: live.position() == head, timeout=30)
    live.stop()
    runner.join()
    assert contents(container, "proj_ledger") == fresh_build(container, "proj_check")


def test_catch_up_until_stops_at_the_given_position_though_the_log_has_moved_on(
    container: Container,
) -> None:
    # A rebuild must finish while writers keep going: it catches up to a head read once.
    seed_ledger(container.billing, users=3, rounds=3)
    middle = container.billing.recorder.max_notification_id() or 0
    seed_ledger(container.billing, users=3, rounds=3)
    runner = container.projection("ledger")
    assert runner.catch_up(until=middle) == middle
    assert runner.catch_up() == container.billing.recorder.max_notification_id()


def test_status_reports_position_and_lag(container: Container) -> None:
    container.users.create("lag@example.com", credits=3)
    runner = container.projection("ledger")
    runner.start()
    behind = admin.status(runner)
    assert behind.position == 0
    assert behind.lag_events == 2  # opened, granted
    assert behind.lag_seconds > 0  # the oldest unprojected event is older than now
    runner.catch_up()
    caught_up = admin.status(runner)
    assert (caught_up.position, caught_up.lag_events, caught_up.lag_seconds) == (behind.head, 0, 0)
