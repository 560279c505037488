"""The reactions backbone with real Dramatiq worker processes on real Redis.

The probe reaction (tests/support/probe.py) counts deposits per account with a counter that is
not idempotent by itself: only the tracking record saved with each count keeps a message
delivered twice, or a batch dispatched twice, from counting twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from domain.credits import Cause, to_units
from infrastructure.broker import make_broker
from infrastructure.dispatcher import Dispatcher
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from tests.support.probe import APPLICATIONS, REACTIONS
from tests.support.processes import child_env, dramatiq_worker, free_port, running, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def probe(settings: Settings) -> Iterator[Container]:
    container = build(settings, reactions=REACTIONS, applications=APPLICATIONS)
    yield container
    container.close()


@pytest.fixture
def worker(probe: Container, settings: Settings, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    with running(dramatiq_worker("tests.support.probe_worker"), child_env(settings), log) as proc:
        time.sleep(0.5)
        assert proc.poll() is None, log.read_text()
        yield log


def counts(container: Container) -> tuple[int, int]:
    """(counted events, tracking records) in the probe's store."""
    with container.pool.connection() as conn:
        counted = conn.execute(
            "SELECT count(*) FROM probe.probe_events WHERE topic LIKE %s", ["%Tally.Counted"]
        ).fetchone()
        tracked = conn.execute("SELECT count(*) FROM probe.probe_tracking").fetchone()
    return (counted[0] if counted else 0, tracked[0] if tracked else 0)


def deposits(container: Container, users: int, each: int) -> int:
    for u in range(users):
        user = container.users.create(f"u{u}@example.com").user_id
        for i in range(each):
            container.billing.deposit(user, "grant", to_units(1), Cause("test", f"{u}-{i}"))
    return users * each


def settle(container: Container, expected: int, log: Path) -> None:
    assert wait_for(lambda: counts(container)[0] >= expected, timeout=60), log.read_text()[-3000:]
    time.sleep(1.5)  # anything duplicated would land by now
    assert counts(container) == (expected, expected)


def test_a_message_delivered_twice_records_one_effect(probe: Container, worker: Path) -> None:
    deposits(probe, users=1, each=1)
    notification_id = probe.billing.recorder.max_notification_id()
    assert notification_id is not None
    for _ in range(2):
        probe.enqueue_reaction("count_deposits", "billing", notification_id)
    settle(probe, 1, worker)


def test_dispatcher_crashing_mid_batch_resends_but_nothing_counts_twice(
    probe: Container, worker: Path
) -> None:
    total = deposits(probe, users=10, each=20)
    sent: list[int] = []

    class Crash(Exception):
        pass

    def crash_after_150(reaction: str, upstream: str, notification_id: int) -> None:
        if len(sent) == 150:
            raise Crash  # the process dies after enqueuing, before recording its position
        sent.append(notification_id)
        probe.enqueue_reaction(reaction, upstream, notification_id)

    [billing] = [d for d in probe.dispatchers() if d.application_name == "billing"]
    crashing = Dispatcher(
        probe.database_url,
        "billing",
        billing.recorder,
        billing.subscriptions,
        crash_after_150,
        batch_size=100,
    )

    def dispatch_until_it_crashes() -> None:
        while crashing.dispatch_batch():
            pass

    with pytest.raises(Crash):
        dispatch_until_it_crashes()
    crashing.close()
    resumed_from = billing.position()
    assert 0 < resumed_from < (probe.billing.recorder.max_notification_id() or 0)
    while billing.dispatch_batch():  # the restarted dispatcher
        pass
    settle(probe, total, worker)
    assert len(sent) == 150  # some of these were sent again after the restart, and absorbed


def test_redis_down_loses_nothing_and_the_dispatcher_catches_up(
    probe: Container, worker: Path
) -> None:
    dead = make_broker(f"redis://127.0.0.1:{free_port()}/0", "nowhere")
    down = Dispatcher(
        probe.database_url,
        "billing",
        probe.billing.recorder,
        probe.reactor.subscriptions("billing"),
        lambda r, u, n: dead.enqueue(
            probe.react_actor.message_with_options(
                kwargs={"reaction": r, "upstream": u, "notification_id": n}
            )
        ),
    )
    total = deposits(probe, users=3, each=4)  # commands keep working: they never touch Redis
    with pytest.raises(RedisError):
        down.dispatch_batch()
    assert down.position() == 0
    [dispatcher] = [d for d in probe.dispatchers() if d.application_name == "billing"]
    while dispatcher.dispatch_batch():
        pass
    settle(probe, total, worker)
