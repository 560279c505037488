"""Dramatiq actors. Thin: decode the message, call one use case."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import structlog

from application.ports import Deferral
from application.reactions import REACTIONS_QUEUE, Reactor
from infrastructure.metrics import reaction_timer

#: Keeps a deferred message durably (see :class:`infrastructure.parking.Parking`).
Park = Callable[[str, str, int, Deferral], None]
log = structlog.get_logger(__name__)


def declare_react_actor(
    broker: dramatiq.Broker,
    reactor: Callable[[], Reactor],
    park: Park,
    queue: str = REACTIONS_QUEUE,
) -> dramatiq.Actor[[str, str, int], None]:
    """The actor that hands one dispatched notification to one reaction (one actor per queue:
    ``react`` on ``reactions``, ``react_<queue>`` on the others). A deferred message is parked
    in PostgreSQL and acknowledged: its wait is not bounded by the broker's retries."""

    def react(reaction: str, upstream: str, notification_id: int) -> None:
        try:
            with reaction_timer(reaction):
                reactor().react(reaction, upstream, notification_id)
        except Deferral as deferral:
            park(reaction, upstream, notification_id, deferral)
            log.info("reaction.parked", reason=str(deferral), delay_s=deferral.delay_s)

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
