"""Reactions: processors that turn one context's events into another's commands.

The event store is the outbox. The dispatcher follows each application's notification log and
enqueues ``(reaction, upstream, notification id)`` messages; a worker calls :meth:`Reactor.react`,
which reads that notification back from the store and hands the event to the reaction. A
reaction records its effects *with a tracking record of the event* (see
:meth:`application.base.PixevoApplication.save_tracked`), so delivering the same message twice
records one effect.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application import tracing
from application.base import PixevoApplication

#: The broker queues reactions are sent to: waiting on providers, and CPU-bound image work.
REACTIONS_QUEUE = "reactions"
IMAGES_QUEUE = "images"
QUEUES = (REACTIONS_QUEUE, IMAGES_QUEUE)


class UnknownReaction(LookupError):
    pass


def tracking_name(upstream: str, reaction: str) -> str:
    """Each reaction tracks its own progress through an upstream log (two reactions in one
    application may both handle the same event)."""
    return f"{upstream}->{reaction}"


class Reaction(ABC):
    #: Unique name, used in messages and logs.
    name: ClassVar[str]
    #: The application whose events it reacts to, and to which of them.
    upstream: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]
    #: Names it had before, so that messages sent under them are still handled.
    former_names: ClassVar[tuple[str, ...]] = ()
    #: The broker queue its messages go to: CPU-bound work gets a queue (and workers) of its own
    #: so it never holds the threads that wait on providers.
    queue: ClassVar[str] = REACTIONS_QUEUE

    @abstractmethod
    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        """Records the effect of ``event`` with ``tracking``; ``False`` if it was already done."""


class Reactor:
    """Looks up reactions by name and feeds them events read back from the store."""

    def __init__(
        self, applications: Mapping[str, PixevoApplication], reactions: Iterable[Reaction]
    ) -> None:
        self.applications = dict(applications)
        self.reactions = {reaction.name: reaction for reaction in reactions}
        self.aliases = {
            former: reaction.name
            for reaction in self.reactions.values()
            for former in reaction.former_names
            if former not in self.reactions
        }

    def subscriptions(self, upstream: str) -> dict[str, tuple[str, ...]]:
        """``{reaction name: topics}`` of the reactions following ``upstream``."""
        return {r.name: r.topics for r in self.reactions.values() if r.upstream == upstream}

    def queues(self) -> set[str]:
        return {reaction.queue for reaction in self.reactions.values()}

    def queue_of(self, reaction_name: str) -> str:
        try:
            return self.reactions[self.aliases.get(reaction_name, reaction_name)].queue
        except KeyError:
            raise UnknownReaction(f"no reaction {reaction_name!r}") from None

    def react(self, reaction_name: str, upstream: str, notification_id: int) -> bool:
        reaction_name = self.aliases.get(reaction_name, reaction_name)
        try:
            reaction = self.reactions[reaction_name]
            app = self.applications[upstream]
        except KeyError as missing:
            raise UnknownReaction(f"no reaction or application {missing}") from None
        found = app.recorder.select_notifications(notification_id, 1, stop=notification_id)
        if not found:
            raise LookupError(f"{upstream} has no notification {notification_id}")
        event: Any = app.decode(found[0])
        # in the trace of the message that asked for it, else (a parked message sent again)
        # in the trace the event was recorded in
        parent = None if tracing.in_trace() else tracing.context_of(event)
        with tracing.span(
            f"reaction {reaction_name}",
            parent,
            {"pixevo.upstream": upstream, "pixevo.notification_id": notification_id},
        ):
            return reaction.handle(
                event, Tracking(tracking_name(upstream, reaction_name), notification_id)
            )
