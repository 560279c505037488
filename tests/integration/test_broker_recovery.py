"""A killed worker's messages come back through maintenance, on the real Redis broker; a live
worker's stay where they are, whatever its consumers are doing."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pytest
import redis
from dramatiq.common import current_millis

from infrastructure.broker import KeepAlive, RecoveringRedisBroker, broker_namespace, make_broker
from tests.support.processes import wait_for
from tests.support.services import scratch_namespace

pytestmark = pytest.mark.integration

QUEUE = "reactions"
TIMEOUT_MS = 2_000


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    with scratch_namespace(redis_url) as namespace:
        yield namespace


def worker(redis_url: str, namespace: str) -> RecoveringRedisBroker:
    broker = make_broker(redis_url, namespace, TIMEOUT_MS)
    broker.declare_queue(QUEUE)
    return broker


def message(n: int) -> dramatiq.Message[None]:
    return dramatiq.Message(
        queue_name=QUEUE, actor_name="react", args=(), kwargs={"n": n}, options={}
    )


def fetched_ids(broker: RecoveringRedisBroker, most: int = 10) -> list[str]:
    return [dramatiq.Message.decode(data).message_id for data in broker.do_fetch(QUEUE, most)]


def last_heartbeat(client: redis.Redis, namespace: str, broker: RecoveringRedisBroker) -> float:
    score = client.zscore(f"{broker_namespace(namespace)}:__heartbeats__", broker.broker_id)
    return -1.0 if score is None else float(score)


def test_maintenance_puts_back_a_dead_workers_message_and_leaves_a_live_ones(
    redis_url: str, namespace: str
) -> None:
    dead, busy, other = (worker(redis_url, namespace) for _ in range(3))
    killed, running = other.enqueue(message(1)), other.enqueue(message(2))
    assert fetched_ids(dead, 1) == [killed.message_id]
    assert fetched_ids(busy, 1) == [running.message_id]
    client = redis.Redis.from_url(redis_url)
    try:  # the killed worker's last heartbeat is older than the timeout; the busy one's fresh
        heartbeats = f"{broker_namespace(namespace)}:__heartbeats__"
        client.zadd(heartbeats, {dead.broker_id: current_millis() - 10 * TIMEOUT_MS})
        busy.heartbeat()
        assert fetched_ids(other) == []  # a fetch never maintains (no maintenance by chance)
        other.maintain()
        assert fetched_ids(other) == [killed.message_id]  # and only the dead one's
    finally:
        client.close()


def test_the_keep_alive_thread_refreshes_and_maintains_without_any_consumer(
    redis_url: str, namespace: str
) -> None:
    """A worker whose consumers are all saturated fetches nothing: its heartbeat must not
    depend on them. The keep-alive alone keeps it fresh, and maintains the queues."""
    dead, live = worker(redis_url, namespace), worker(redis_url, namespace)
    killed = live.enqueue(message(1))
    assert fetched_ids(dead, 1) == [killed.message_id]
    client = redis.Redis.from_url(redis_url)
    keep_alive = KeepAlive(interval_s=0.05, quiet_s=0.2)
    try:
        client.zadd(
            f"{broker_namespace(namespace)}:__heartbeats__",
            {dead.broker_id: current_millis() - 10 * TIMEOUT_MS},
        )
        started = current_millis()
        keep_alive.start(live)
        assert wait_for(lambda: last_heartbeat(client, namespace, live) > started, timeout=10)
        seen = last_heartbeat(client, namespace, live)
        assert wait_for(lambda: last_heartbeat(client, namespace, live) > seen, timeout=10)
        requeued = f"{broker_namespace(namespace)}:{QUEUE}"
        assert wait_for(lambda: client.llen(requeued) == 1, timeout=10)
    finally:
        keep_alive.stop()
        client.close()
    assert fetched_ids(live) == [killed.message_id]
