"""The reactions that carry a generation from request to billed result.

    fund_generation      Requested  -> a hold on the user's credits, then Funded+Queued
                                       (or Failed: insufficient_credits)
    generate             Queued     -> the provider, with its retry policy, circuit breaker,
                                       fallback or deferral -> Submitted, Produced, Completed
    cancel_at_provider   CancelRequested -> the provider is told; Cancelled
    settle_generation    Completed | Failed | Cancelled -> capture or release the hold

Each records its effect with a tracking record of the event it handles, so a redelivered
message changes nothing; ``generate`` records the provider's job id before it waits, so a
worker killed mid-call is resumed (by the redelivered message) without a second submission.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.billing import AccountNotFound, BillingApplication
from application.catalogue import ModelSpec
from application.generations import GenerationsApplication
from application.live import LiveMessage, LivePublisher, ProgressRelay
from application.logs import topic_of
from application.normalise import GenerationRequest, InvalidRequest, Normalised, normalise
from application.ports import BlobStore, CircuitBreakers, CircuitOpen, Deferral, ResultCache
from application.providers import (
    Output,
    Progress,
    ProgressSink,
    ProviderAdapter,
    ProviderFailure,
    Submitted,
)
from application.reactions import Reaction
from application.retry import retry_on_conflict
from domain.credits import Cause, hold_id_for, to_units
from domain.errors import InsufficientCredits
from domain.generation import Generation, GenerationFinished

DEFER_S = 5.0
EXTENSIONS = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpg"}


def preview_key(generation_id: UUID, number: int) -> str:
    return f"generations/{generation_id}/previews/{number}.jpg"


def cause_of(generation_id: UUID) -> Cause:
    return Cause("generation", str(generation_id))


def request_for(generation: Generation, spec: ModelSpec) -> GenerationRequest:
    """The generation's request as ``spec`` (its model now, after any fallback) takes it."""
    params = (
        {k: v for k, v in generation.params.items() if k != "aspect_ratio"}
        if spec.capabilities.sizes
        else dict(generation.params)
    )
    if spec.capabilities.aspect_ratios is not None:
        params.pop("width", None)
        params.pop("height", None)
    return GenerationRequest(
        model=spec.key,
        prompt=generation.prompt,
        negative_prompt=generation.negative_prompt,
        params=params,
        allow_fallback=generation.allow_fallback,
        output_format=generation.output_format,
    )


def cost_of(generation: Generation, spec: ModelSpec) -> int:
    """What the result costs on the model that made it (``complete`` caps it at the quote)."""
    return normalise(spec, request_for(generation, spec)).cost_units


class FundGeneration(Reaction):
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
        return bool(retry_on_conflict(self._fund)(event.originator_id, tracking))

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

    def _fund(self, generation_id: UUID, tracking: Tracking) -> bool:
        if self.generations.already_processed(tracking):
            return False
        generation = self.generations.generation(None, generation_id)
        cause = cause_of(generation_id)
        if generation.status == "requested":
            try:
                hold_id = self.billing.place_hold(generation.user_id, generation.quote, cause)
            except (InsufficientCredits, AccountNotFound) as refused:
                generation.fail("insufficient_credits", str(refused))
            else:
                generation.fund(hold_id)
                self._serve_or_queue(generation)
        elif generation.finished and generation.hold_id is None:
            # cancelled while its hold was being placed: give the credits back
            self.billing.release_cause(generation.user_id, cause)
        return self.generations.save_tracked(tracking, generation)


class SettleGeneration(Reaction):
    name = "settle_generation"
    upstream = "generations"
    topics = tuple(
        topic_of(c)
        for c in (
            Generation.Completed,
            Generation.Failed,
            Generation.Cancelled,
            Generation.Blocked,
        )
    )

    def __init__(self, generations: GenerationsApplication, billing: BillingApplication) -> None:
        self.generations, self.billing = generations, billing

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        return bool(retry_on_conflict(self._settle)(event, tracking))

    def _settle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if self.billing.already_processed(tracking):
            return False
        generation = self.generations.generation(None, event.originator_id)
        account = self.billing.load_account(generation.user_id)
        hold = hold_id_for(cause_of(generation.id))
        if str(hold) in account.holds:
            if isinstance(event, Generation.Completed):
                account.capture(hold, event.charged)
            elif isinstance(event, Generation.Blocked) and event.charged is not None:
                note = f"blocked by {event.layer} ({event.version}); billing policy: {event.policy}"
                if event.charged:
                    account.capture(hold, event.charged, note)
                else:
                    account.release(hold, note)
            elif not isinstance(event, Generation.Blocked):
                account.release(hold)
        return self.billing.save_tracked(tracking, account)


class CancelAtProvider(Reaction):
    name = "cancel_at_provider"
    upstream = "generations"
    topics = (topic_of(Generation.CancelRequested),)

    def __init__(self, generations: GenerationsApplication, providers: Any) -> None:
        self.generations, self.providers = generations, providers

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        generation = self.generations.generation(None, event.originator_id)
        if generation.job_id and not generation.finished:
            spec = self.generations.catalogue.get(generation.model)
            with contextlib.suppress(ProviderFailure):  # generate sees the job end either way
                self.providers.for_model(spec).cancel(spec, generation.job_id)
        return bool(retry_on_conflict(self._record)(event.originator_id, tracking))

    def _record(self, generation_id: UUID, tracking: Tracking) -> bool:
        if self.generations.already_processed(tracking):
            return False
        generation = self.generations.generation(None, generation_id)
        # a produced result is past cancelling: processing completes it
        if generation.status != "processing" and (
            generation.job_id is None or generation.status == "running"
        ):
            generation.cancel()
        return self.generations.save_tracked(tracking, generation)


class Generate(Reaction):
    name = "generate"
    upstream = "generations"
    topics = (topic_of(Generation.Queued),)

    def __init__(
        self,
        generations: GenerationsApplication,
        providers: Any,
        breakers: CircuitBreakers,
        blobs: BlobStore,
        *,
        live: LivePublisher | None = None,
        sleep: Any = time.sleep,
    ) -> None:
        self.generations, self.providers = generations, providers
        self.breakers, self.blobs, self.sleep = breakers, blobs, sleep
        self.live = live

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        generation = self.generations.generation(None, event.originator_id)
        if generation.finished or self.generations.already_processed(tracking):
            return False
        while True:
            spec = self.generations.catalogue.get(generation.model)
            adapter: ProviderAdapter = self.providers.for_model(spec)
            started = time.monotonic()
            try:
                output = self._run(generation, spec, adapter)
            except _SwitchedModel:
                generation = self.generations.generation(None, generation.id)
                continue
            except ProviderFailure as failure:
                if failure.kind == "content_rejected":  # the provider's safety filter
                    return self._finish(
                        tracking, generation.id, lambda g, f=failure, s=spec: self._block(g, s, f)
                    )
                return self._finish(
                    tracking, generation.id, lambda g, f=failure: g.fail(f.kind, f.message)
                )
            except GenerationFinished:
                return False
            if output is None:  # cancelled
                return self._finish(tracking, generation.id, lambda g: g.cancel())
            return self._produce(tracking, generation.id, adapter, output, started)

    # -- one model -------------------------------------------------------------------------

    def _run(
        self, generation: Generation, spec: ModelSpec, adapter: ProviderAdapter
    ) -> Output | None:
        if generation.cancel_requested:
            return None
        job_id = generation.job_id  # set when a redelivered message resumes a submitted job
        if job_id is None:
            submitted = self._submit(generation, spec, adapter)
            if submitted.output is not None:
                return submitted.output
            job_id = submitted.job_id
        try:
            return adapter.wait(spec, job_id or "", self._progress(generation, spec, adapter))
        except ProviderFailure as failure:
            if self.generations.generation(None, generation.id).cancel_requested:
                return None
            raise failure from None

    def _submit(
        self, generation: Generation, spec: ModelSpec, adapter: ProviderAdapter
    ) -> Submitted:
        request = self._normalised(generation, spec)
        for attempt in range(1, spec.retry.attempts + 1):
            try:
                with self.breakers.guard(spec.provider):
                    submitted = adapter.submit(spec, request)
            except CircuitOpen:
                self._fall_back_or_defer(generation, spec, "circuit open")
            except ProviderFailure as failure:
                if not failure.retryable or attempt == spec.retry.attempts:
                    if failure.kind in ("unavailable", "timeout"):
                        self._fall_back_or_defer(generation, spec, failure.kind)
                    raise
                delay = (
                    failure.retry_after_s
                    if failure.retry_after_s is not None
                    else spec.retry.backoff_ms / 1000 * 2 ** (attempt - 1)
                )
                self.sleep(delay)
                continue
            self._record_submission(generation.id, submitted.job_id, attempt, spec, adapter)
            return submitted
        raise ProviderFailure("provider_error", "no attempt left")  # pragma: no cover

    def _record_submission(
        self,
        generation_id: UUID,
        job_id: str | None,
        attempt: int,
        spec: ModelSpec,
        adapter: ProviderAdapter,
    ) -> None:
        def record() -> None:
            generation = self.generations.generation(None, generation_id)
            generation.submitted(job_id, attempt)
            self.generations.save(generation)

        try:
            retry_on_conflict(record)()
        except GenerationFinished:  # cancelled while we submitted: take the job back
            if job_id:
                adapter.cancel(spec, job_id)
            raise

    def _fall_back_or_defer(self, generation: Generation, spec: ModelSpec, reason: str) -> None:
        if generation.allow_fallback:
            for key in spec.fallbacks:
                candidate = self.generations.catalogue.get(key)
                if self.breakers.is_open(candidate.provider):
                    continue
                try:
                    self._normalised(generation, candidate)
                except InvalidRequest:
                    continue
                self._change(
                    generation.id,
                    lambda g, c=candidate: g.fall_back(
                        c.key, c.provider, f"{spec.provider}: {reason}"
                    ),
                )
                raise _SwitchedModel
        self._change(generation.id, lambda g: g.defer(f"{spec.provider} is unavailable"))
        raise Deferral(f"{spec.provider} is unavailable ({reason})", DEFER_S)

    def _progress(
        self, generation: Generation, spec: ModelSpec, adapter: ProviderAdapter
    ) -> ProgressSink | None:
        """Relays a streaming provider's percentages and previews to the live feed."""
        live = self.live
        if live is None or not spec.capabilities.streaming:
            return None

        def send(percent: float, preview_url: str | None) -> None:
            data: dict[str, Any] = {
                "generation_id": str(generation.id),
                "percent": round(percent, 1),
                "estimated": False,
            }
            if preview_url:
                data["preview_url"] = preview_url
            live.publish(
                [
                    LiveMessage(
                        type="progress",
                        generation_id=generation.id,
                        user_id=generation.user_id,
                        data=data,
                    )
                ]
            )

        def store_preview(url: str, number: int) -> str | None:
            try:
                data = adapter.fetch(Output(url, None, 0, 0, "image/jpeg"))
            except ProviderFailure:
                return None  # a missing preview is no reason to stop
            self.blobs.put(preview_key(generation.id, number), data, "image/jpeg")
            return f"/v1/generations/{generation.id}/previews/{number}"

        relay = ProgressRelay(send, store_preview=store_preview)

        def on_progress(progress: Progress) -> None:
            if progress.percent >= 0:  # negative: the provider reports no percentage
                relay(min(progress.percent, 99.0), progress.preview_url)

        return on_progress

    # -- results ---------------------------------------------------------------------------

    def _produce(
        self,
        tracking: Tracking,
        generation_id: UUID,
        adapter: ProviderAdapter,
        output: Output,
        started: float,
    ) -> bool:
        data = adapter.fetch(output)
        extension = EXTENSIONS.get(output.content_type, "bin")
        key = f"generations/{generation_id}/original.{extension}"
        self.blobs.put(key, data, output.content_type)

        def done(generation: Generation) -> None:  # post-processing completes it
            elapsed_ms = int((time.monotonic() - started) * 1000)
            generation.produced(
                key, output.width, output.height, output.content_type, len(data), elapsed_ms
            )

        return self._finish(tracking, generation_id, done)

    def _block(self, generation: Generation, spec: ModelSpec, failure: ProviderFailure) -> None:
        policy = self.generations.moderation
        generation.block(
            "provider",
            failure.message,
            f"{spec.provider}/{spec.key}",
            charge=policy.blocked_charge(cost_of(generation, spec)),
            policy=policy.blocked_billing,
        )

    def _finish(self, tracking: Tracking, generation_id: UUID, change: Any) -> bool:
        return self.generations.change_tracked(tracking, generation_id, change)

    def _change(self, generation_id: UUID, change: Any) -> None:
        def record() -> None:
            generation = self.generations.generation(None, generation_id)
            change(generation)
            self.generations.save(generation)

        retry_on_conflict(record)()

    def _normalised(self, generation: Generation, spec: ModelSpec) -> Normalised:
        return normalise(spec, request_for(generation, spec))


class _SwitchedModel(Exception):
    """The generation fell back to another model: run again with it."""
