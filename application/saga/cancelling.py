"""Cancelling at the provider: a cancel asked while a provider has the job.

The generation shows ``cancelling`` from the request until the provider answers. Confirmed:
``Cancelled``, nothing charged. Unreachable: the cancel waits, parked, and is asked again
(until the generation's deadline, when the sweep cancels it). Already finished: the outcome
follows the provider (``Generate`` records what it delivered, billed, with the late cancel
noted on the ledger entry). A synchronous call has no job to cancel: its answer decides too.
"""

from __future__ import annotations

import logging
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.generations import GenerationsApplication
from application.logs import topic_of
from application.ports import Deferral
from application.providers import ProviderDirectory, ProviderFailure
from application.reactions import Reaction
from domain.generation import Generation

#: How long a cancel the provider did not answer waits before it is asked again.
CANCEL_RETRY_S = 5.0
log = logging.getLogger(__name__)


class CancelAtProvider(Reaction):
    name = "cancel_at_provider"
    upstream = "generations"
    topics = (topic_of(Generation.CancelRequested),)

    def __init__(self, generations: GenerationsApplication, providers: ProviderDirectory) -> None:
        self.generations, self.providers = generations, providers

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        generation = self.generations.generation(None, event.originator_id)
        if generation.status != "cancelling" or generation.job_id is None:
            # ended, produced (processing completes it), or a synchronous call: nothing to ask
            return self.generations.change_tracked(tracking, generation.id, Generation.cancel)
        spec = self.generations.catalogue.get(generation.model)
        try:
            confirmed = self.providers.for_model(spec).cancel(spec, generation.job_id)
        except ProviderFailure as failure:
            if failure.retryable:
                log.info(
                    "provider.cancel_retry",
                    extra={"job_id": generation.job_id, "kind": failure.kind},
                )
                raise Deferral(
                    f"cancel not confirmed: {failure}", CANCEL_RETRY_S, generation_id=generation.id
                ) from None
            confirmed = True  # the provider refuses to know the job: nothing of it will bill
        log.info("provider.cancel", extra={"job_id": generation.job_id, "confirmed": confirmed})
        if not confirmed:  # it finished first: what it delivered decides
            return self.generations.save_tracked(tracking)
        return self.generations.change_tracked(tracking, generation.id, Generation.cancel)
