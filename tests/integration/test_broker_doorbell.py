"""An idle consumer waits on its queue's doorbell, not on a clock: an enqueue wakes it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dramatiq
import pytest
import redis

from infrastructure.broker import (
    DOORBELL_RINGS,
    RecoveringRedisBroker,
    doorbell,
    make_broker,
)
from tests.support.processes import wait_for
from tests.support.services import scratch_namespace

pytestmark = pytest.mark.integration

QUEUE = "reactions"


@pytest.fixture
def broker(redis_url: str) -> Iterator[RecoveringRedisBroker]:
    with scratch_namespace(redis_url) as namespace:
        made = make_broker(redis_url, namespace)
        made.declare_queue(QUEUE)
        yield made
        made.close()


def message(n: int) -> dramatiq.Message[None]:
    return dramatiq.Message(
        queue_name=QUEUE, actor_name="react", args=(), kwargs={"n": n}, options={}
    )


def rings(broker: RecoveringRedisBroker, redis_url: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        return int(client.llen(doorbell(broker.namespace, QUEUE)))


def test_an_enqueue_wakes_a_consumer_that_would_otherwise_wait_a_minute(
    broker: RecoveringRedisBroker,
) -> None:
    consumer = broker.consume(QUEUE, prefetch=1, timeout=60_000)  # polls once a minute
    got: list[dramatiq.broker.MessageProxy] = []
    idle = threading.Event()

    def consume() -> None:
        while not got:
            idle.set()
            if (proxy := next(consumer)) is not None:
                got.append(proxy)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert idle.wait(5)
    sent = broker.enqueue(message(1))
    assert wait_for(lambda: bool(got), timeout=20), "the enqueue did not wake the consumer"
    assert got[0].message_id == sent.message_id
    consumer.ack(got[0])
    thread.join(timeout=5)


def test_rings_are_bounded_and_a_delayed_message_rings_nothing(
    broker: RecoveringRedisBroker, redis_url: str
) -> None:
    broker.enqueue(message(0), delay=60_000)
    assert rings(broker, redis_url) == 0  # it is not due: nobody should fetch for it
    for n in range(DOORBELL_RINGS + 5):
        broker.enqueue(message(n))
    assert rings(broker, redis_url) == DOORBELL_RINGS
