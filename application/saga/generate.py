"""Generate: a requested generation is funded, goes to its model's provider and comes back
produced, all in one message (funding is :class:`~application.saga.funding.FundGeneration`'s
step, run first: no dispatcher hop between funding and submitting). The tracking record of the
``Requested`` event is recorded with the last of its effects (produced, failed, cancelled, or
what funding ended it with); the steps between are saved as they happen, so a redelivered
message resumes where the last one stopped.

The job id is recorded (by :class:`ProviderCall`) before anyone waits on it, so a redelivered
message resumes waiting on the same job instead of submitting again. A transient failure while
waiting on a submitted job (503, 429, a timeout, a dropped stream) is retried against that same
job, with backoff (Retry-After honoured), until the generation's deadline: never resubmitted.

Before submitting, it takes one of its user's slots (:class:`~application.ports.ProviderSlots`):
with none free it waits in line, deferred, and the worker's thread is free at once. The slot is
given back when the generation leaves the provider (produced, failed, cancelled or deferred).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application import tracing
from application.assets import result_key
from application.catalogue import ModelSpec
from application.generations import GenerationsApplication
from application.live import LivePublisher
from application.logs import topic_of
from application.ports import BlobStore, CircuitBreakers, Deferral, ProviderSlots
from application.providers import (
    Output,
    ProgressSink,
    ProviderAdapter,
    ProviderDirectory,
    ProviderFailure,
)
from application.reactions import Reaction
from application.saga.deadlines import Clock, Patience, utc_now
from application.saga.funding import FundGeneration
from application.saga.progress import progress_sink
from application.saga.provider_call import ProviderCall, SwitchedModel
from domain.generation import Generation, GenerationFinished

Change = Callable[[Generation], None]
#: Failures while waiting on a submitted job that say nothing about the job itself.
TRANSIENT_WHILE_WAITING = frozenset({"rate_limited", "timeout", "unavailable"})
WAIT_RETRY_MAX_S = 10.0
log = logging.getLogger(__name__)


class Generate(Reaction):
    name = "generate"
    #: Messages sent before funding and submitting were one reaction still find it.
    former_names = ("fund_generation",)
    upstream = "generations"
    topics = (topic_of(Generation.Requested),)

    def __init__(
        self,
        generations: GenerationsApplication,
        funding: FundGeneration,
        providers: ProviderDirectory,
        breakers: CircuitBreakers,
        blobs: BlobStore,
        *,
        live: LivePublisher | None = None,
        sleep: Callable[[float], None] = time.sleep,
        slots: ProviderSlots | None = None,
        patience: Patience | None = None,
        now: Clock = utc_now,
    ) -> None:
        self.generations, self.providers, self.blobs = generations, providers, blobs
        self.funding = funding
        self.patience = patience or Patience()
        self.call = ProviderCall(generations, breakers, sleep, self.patience, now)
        self.live, self.slots, self.sleep, self.now = live, slots, sleep, now

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if self.generations.already_processed(tracking):
            self._release(event.originator_id)
            return False
        ready = self.funding.prepare(event.originator_id, tracking)
        if ready is None:  # funding ended it (and recorded so)
            self._release(event.originator_id)
            return True
        generation = ready
        slots = self.slots
        if (  # not at a provider yet, and the user has as many there as they may
            slots is not None
            and generation.job_id is None
            and not slots.take(generation.user_id, generation.id)
        ):
            try:
                self.call.wait_for_slot(generation, slots.cap)
            except GenerationFinished:
                return False
        try:
            done = self._generate(generation, tracking)
        except Deferral:
            self._release(generation.id)
            raise
        self._release(generation.id)
        return done

    def _release(self, generation_id: UUID) -> None:
        if self.slots is not None:
            self.slots.release(generation_id)

    def _generate(self, generation: Generation, tracking: Tracking) -> bool:
        while True:
            spec = self.generations.catalogue.get(generation.model)
            adapter = self.providers.for_model(spec)
            started = time.monotonic()
            try:
                with tracing.span(
                    "provider.call",
                    attributes={
                        "pixevo.provider": spec.provider,
                        "pixevo.model": spec.key,
                        "pixevo.provider.job_id": generation.job_id,
                    },
                ):
                    output, generation = self._run(generation, spec, adapter)
            except SwitchedModel:
                generation = self.generations.generation(None, generation.id)
                continue
            except ProviderFailure as failure:
                current = self.generations.generation(None, generation.id)
                log.warning(
                    "provider.failed",
                    extra={
                        "kind": failure.kind,
                        "detail": failure.message[:200],
                        "job_id": current.job_id,
                    },
                )
                return self._finish(tracking, current, self._failed(failure, spec))
            except GenerationFinished:
                return False
            if output is None:  # cancelled
                return self._finish(tracking, generation.id, Generation.cancel)
            return self._produce(tracking, generation, adapter, output, started)

    def _run(
        self, generation: Generation, spec: ModelSpec, adapter: ProviderAdapter
    ) -> tuple[Output | None, Generation]:
        """The provider's output (``None`` when the generation was cancelled), and the
        generation as this reaction last saved it."""
        job_id = generation.job_id  # set when a redelivered message resumes a submitted job
        if generation.cancel_requested and job_id is None:  # nothing at a provider to follow
            return None, generation
        if job_id is None:
            submitted, generation = self.call.submit(generation, spec, adapter)
            if submitted.output is not None:
                return submitted.output, generation
            job_id = submitted.job_id
            tracing.annotate({"pixevo.provider.job_id": job_id})
        sink = None
        if self.live is not None and spec.capabilities.streaming:
            sink = progress_sink(generation, adapter, self.live, self.blobs)
        return self._wait(generation.id, spec, adapter, job_id or "", sink), generation

    def _wait(
        self,
        generation_id: UUID,
        spec: ModelSpec,
        adapter: ProviderAdapter,
        job_id: str,
        sink: ProgressSink | None,
    ) -> Output | None:
        """The job's output; a transient failure is retried on the same job until the
        generation's deadline. ``None`` when the job ended because it was cancelled."""
        attempt = 0
        while True:
            try:
                return adapter.wait(spec, job_id, sink)
            except ProviderFailure as failure:
                current = self.generations.generation(None, generation_id)
                if current.finished:  # the sweep ended it meanwhile
                    raise GenerationFinished(f"generation {generation_id} ended") from None
                transient = failure.kind in TRANSIENT_WHILE_WAITING
                if not transient and current.cancel_requested:
                    return None
                due = current.due(self.patience.allowance(spec))
                if not transient or due is None or self.now() >= due:
                    raise failure from None
                attempt += 1
                delay = failure.retry_after_s
                if delay is None:
                    delay = min(WAIT_RETRY_MAX_S, spec.retry.backoff_ms / 1000 * 2 ** (attempt - 1))
                log.info(
                    "provider.wait_retry",
                    extra={
                        "job_id": job_id,
                        "kind": failure.kind,
                        "attempt": attempt,
                        "retry_in_s": delay,
                    },
                )
                self.sleep(delay)

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
        generation: Generation,
        adapter: ProviderAdapter,
        output: Output,
        started: float,
    ) -> bool:
        data = adapter.fetch(output)
        log.info(
            "provider.produced", extra={"content_type": output.content_type, "bytes": len(data)}
        )
        key = result_key(generation.id, output.content_type)
        self.blobs.put(key, data, output.content_type)
        elapsed_ms = int((time.monotonic() - started) * 1000)

        def produced(generation: Generation) -> None:  # post-processing completes it
            generation.produced(
                key, output.width, output.height, output.content_type, len(data), elapsed_ms
            )

        return self._finish(tracking, generation, produced)

    def _finish(self, tracking: Tracking, generation: UUID | Generation, change: Change) -> bool:
        return self.generations.change_tracked(tracking, generation, change)
