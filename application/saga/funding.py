"""Funding: a hold on the user's credits for the generation's cause, before anything runs."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.billing import AccountNotFound, BillingApplication
from application.generations import GenerationsApplication
from application.logs import topic_of
from application.ports import ResultCache
from application.reactions import Reaction
from application.retry import retry_on_conflict
from domain.credits import to_units
from domain.errors import InsufficientCredits
from domain.generation import Generation


class FundGeneration(Reaction):
    """Funding, the first step of :class:`~application.saga.generate.Generate`, which runs it
    in the same message (:meth:`prepare`) before it submits: no hop through the dispatcher
    between the two. On its own (:meth:`handle`) it records its tracking when it is done."""

    name = "fund_generation"
    upstream = "generations"
    topics = (topic_of(Generation.Requested),)

    def __init__(
        self,
        generations: GenerationsApplication,
        billing: BillingApplication,
        cache: ResultCache | None = None,
    ) -> None:
        self.generations, self.billing, self.cache = generations, billing, cache

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if self.generations.already_processed(tracking):
            return False
        ready = self.prepare(event.originator_id, tracking)
        return ready is None or self.generations.save_tracked(tracking)

    def prepare(self, generation_id: UUID, tracking: Tracking) -> Generation | None:
        """The generation funded and queued for its provider, as saved (untracked: the caller
        records ``tracking`` once the provider's part is done). ``None`` when funding ended it
        (insufficient credits, served from the cache, a hold given back after a cancel): then
        the effect was recorded with ``tracking``."""
        return retry_on_conflict(self._prepare)(generation_id, tracking)

    def _prepare(self, generation_id: UUID, tracking: Tracking) -> Generation | None:
        generation = self.generations.generation(None, generation_id)
        if generation.status == "requested" and generation.shared_hold is not None:
            generation.fund(generation.shared_hold)  # its cause was funded before it was made
            self._serve_or_queue(generation)
        elif generation.status == "requested":
            try:
                hold_id = self.billing.place_hold(
                    generation.user_id, generation.quote, generation.cause
                )
            except (InsufficientCredits, AccountNotFound) as refused:
                generation.fail("insufficient_credits", str(refused))
            else:
                generation.fund(hold_id)
                self._serve_or_queue(generation)
        elif generation.finished and generation.hold_id is None and not generation.shared_hold:
            # cancelled while its hold was being placed: give the credits back
            self.billing.release_cause(generation.user_id, generation.cause)
        if generation.finished:
            self.generations.save_tracked(tracking, generation)
            return None
        if generation.pending_events:  # not when a redelivered message finds it queued
            self.generations.save(generation)
        return generation

    def _serve_or_queue(self, generation: Generation) -> None:
        """A deterministic model asked with an explicit seed: an identical completed request
        (any user's) is served from its stored result, at the catalogue's cache price."""
        spec = self.generations.catalogue.get(generation.model)
        cacheable = spec.capabilities.deterministic and "seed" in generation.params
        hit = self.cache.find(generation.fingerprint) if cacheable and self.cache else None
        if hit is None:
            generation.queue()
            return
        source_id, result = hit
        generation.serve_from_cache(source_id, result, cost=to_units(spec.pricing.cache_credits))
