"""Generate: a queued generation goes to its model's provider and comes back produced.

The job id is recorded (by :class:`ProviderCall`) before anyone waits on it, so a redelivered
message resumes waiting on the same job instead of submitting again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.assets import result_key
from application.catalogue import ModelSpec
from application.generations import GenerationsApplication
from application.live import LivePublisher
from application.logs import topic_of
from application.ports import BlobStore, CircuitBreakers
from application.providers import Output, ProviderAdapter, ProviderDirectory, ProviderFailure
from application.reactions import Reaction
from application.saga.progress import progress_sink
from application.saga.provider_call import ProviderCall, SwitchedModel
from domain.generation import Generation, GenerationFinished

Change = Callable[[Generation], None]


class Generate(Reaction):
    name = "generate"
    upstream = "generations"
    topics = (topic_of(Generation.Queued),)

    def __init__(
        self,
        generations: GenerationsApplication,
        providers: ProviderDirectory,
        breakers: CircuitBreakers,
        blobs: BlobStore,
        *,
        live: LivePublisher | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.generations, self.providers, self.blobs = generations, providers, blobs
        self.call = ProviderCall(generations, breakers, sleep)
        self.live = live

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        generation = self.generations.generation(None, event.originator_id)
        if generation.finished or self.generations.already_processed(tracking):
            return False
        while True:
            spec = self.generations.catalogue.get(generation.model)
            adapter = self.providers.for_model(spec)
            started = time.monotonic()
            try:
                output = self._run(generation, spec, adapter)
            except SwitchedModel:
                generation = self.generations.generation(None, generation.id)
                continue
            except ProviderFailure as failure:
                return self._finish(tracking, generation.id, self._failed(failure, spec))
            except GenerationFinished:
                return False
            if output is None:  # cancelled
                return self._finish(tracking, generation.id, Generation.cancel)
            return self._produce(tracking, generation.id, adapter, output, started)

    def _run(
        self, generation: Generation, spec: ModelSpec, adapter: ProviderAdapter
    ) -> Output | None:
        """The provider's output, or ``None`` when the generation was cancelled."""
        if generation.cancel_requested:
            return None
        job_id = generation.job_id  # set when a redelivered message resumes a submitted job
        if job_id is None:
            submitted = self.call.submit(generation, spec, adapter)
            if submitted.output is not None:
                return submitted.output
            job_id = submitted.job_id
        sink = None
        if self.live is not None and spec.capabilities.streaming:
            sink = progress_sink(generation, adapter, self.live, self.blobs)
        try:
            return adapter.wait(spec, job_id or "", sink)
        except ProviderFailure as failure:
            if self.generations.generation(None, generation.id).cancel_requested:
                return None
            raise failure from None

    def _failed(self, failure: ProviderFailure, spec: ModelSpec) -> Change:
        if failure.kind != "content_rejected":
            return lambda g: g.fail(failure.kind, failure.message)
        policy = self.generations.moderation  # the provider's safety filter made no image

        def block(generation: Generation) -> None:
            generation.block(
                "provider",
                failure.message,
                f"{spec.provider}/{spec.key}",
                charge=policy.blocked_charge(self.generations.sent_request(generation).cost_units),
                policy=policy.blocked_billing,
            )

        return block

    def _produce(
        self,
        tracking: Tracking,
        generation_id: UUID,
        adapter: ProviderAdapter,
        output: Output,
        started: float,
    ) -> bool:
        data = adapter.fetch(output)
        key = result_key(generation_id, output.content_type)
        self.blobs.put(key, data, output.content_type)
        elapsed_ms = int((time.monotonic() - started) * 1000)

        def produced(generation: Generation) -> None:  # post-processing completes it
            generation.produced(
                key, output.width, output.height, output.content_type, len(data), elapsed_ms
            )

        return self._finish(tracking, generation_id, produced)

    def _finish(self, tracking: Tracking, generation_id: UUID, change: Change) -> bool:
        return self.generations.change_tracked(tracking, generation_id, change)
