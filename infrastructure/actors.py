"""Dramatiq actors. Thin: decode the message, call one use case."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq

from application.ports import Deferral
from application.reactions import Reactor

REACTIONS_QUEUE = "reactions"


def declare_react_actor(
    broker: dramatiq.Broker, reactor: Callable[[], Reactor], queue: str = REACTIONS_QUEUE
) -> dramatiq.Actor[[str, str, int], None]:
    """The actor that hands one dispatched notification to one reaction (one actor per queue:
    ``react`` on ``reactions``, ``react_<queue>`` on the others)."""

    def react(reaction: str, upstream: str, notification_id: int) -> None:
        try:
            reactor().react(reaction, upstream, notification_id)
        except Deferral as deferral:  # wait durably in the broker, then run again
            raise dramatiq.Retry(str(deferral), delay=int(deferral.delay_s * 1000)) from None

    declare = dramatiq.actor(
        actor_name="react" if queue == REACTIONS_QUEUE else f"react_{queue}",
        queue_name=queue,
        broker=broker,
        max_retries=100,
        time_limit=30 * 60 * 1000,  # a video may take many minutes
        min_backoff=200,
        max_backoff=60_000,
    )
    return declare(react)
