"""Cancelling at the provider: a cancel asked while a provider has the job."""

from __future__ import annotations

import contextlib
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.generations import GenerationsApplication
from application.logs import topic_of
from application.providers import ProviderDirectory, ProviderFailure
from application.reactions import Reaction
from domain.generation import Generation


class CancelAtProvider(Reaction):
    name = "cancel_at_provider"
    upstream = "generations"
    topics = (topic_of(Generation.CancelRequested),)

    def __init__(self, generations: GenerationsApplication, providers: ProviderDirectory) -> None:
        self.generations, self.providers = generations, providers

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        generation = self.generations.generation(None, event.originator_id)
        if generation.job_id and not generation.finished:
            spec = self.generations.catalogue.get(generation.model)
            with contextlib.suppress(ProviderFailure):  # generate sees the job end either way
                self.providers.for_model(spec).cancel(spec, generation.job_id)
        # the aggregate decides: a produced result is past cancelling (processing completes it)
        return self.generations.change_tracked(tracking, generation.id, Generation.cancel)
