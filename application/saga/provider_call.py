"""How a request reaches a provider: the call policy of the ``Generate`` reaction.

    submit ──▶ breaker open ─────────────────────────────▶ fall back, or defer
       │──▶ retryable failure ──▶ wait (Retry-After, or the model's backoff) ──▶ submit again
       │        └── attempts used up: unavailable / timeout ──▶ fall back, or defer
       └──▶ accepted: the job id is recorded before anyone waits on it

A fallback hands the request, normalised again for the equivalent model, to that model (the
only time a stored request is normalised again: see ``GenerationsApplication.normalised_for``)
and records it with its cost there; a deferral records why, when it tries again and when it
gives up (``Deferred``), and raises :class:`Deferral`: the worker parks the message durably.
A synchronous provider's call is recorded as started (``running``) before it is made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

from application.catalogue import ModelSpec
from application.generations import GenerationsApplication
from application.normalise import InvalidRequest, Normalised
from application.ports import CircuitBreakers, CircuitOpen, Deferral
from application.providers import ProviderAdapter, ProviderFailure, Submitted
from application.saga.deadlines import Clock, Patience, utc_now
from domain.generation import Generation, GenerationFinished

#: How long a deferred generation first waits before it tries its provider again; each further
#: deferral doubles it, up to :data:`DEFER_MAX_S`.
DEFER_S = 5.0
DEFER_MAX_S = 30.0
log = logging.getLogger(__name__)


class SwitchedModel(Exception):
    """The generation fell back to another model: run it again with that one."""


class ProviderCall:
    """Submits a generation's request with its model's retry policy and circuit breaker."""

    def __init__(
        self,
        generations: GenerationsApplication,
        breakers: CircuitBreakers,
        sleep: Callable[[float], None] = time.sleep,
        patience: Patience | None = None,
        now: Clock = utc_now,
    ) -> None:
        self.generations, self.breakers, self.sleep = generations, breakers, sleep
        self.patience = patience or Patience()
        self.now = now

    def submit(
        self, generation: Generation, spec: ModelSpec, adapter: ProviderAdapter
    ) -> tuple[Submitted, Generation]:
        """The accepted job (recorded), and the generation as recorded; raises
        :class:`SwitchedModel` after a fallback, :class:`Deferral` while no provider can take
        it, :class:`ProviderFailure` when it failed for good."""
        request = self.generations.sent_request(generation)
        synchronous = spec.wire == "images"
        if synchronous:  # it answers when it is done: show it running while it works
            generation = self._record(generation, None, 1, spec, adapter)
        met: str | None = None  # what this call's attempts met at the provider
        for attempt in range(1, spec.retry.attempts + 1):
            try:
                with self.breakers.guard(spec.provider):
                    submitted = adapter.submit(spec, request)
            except CircuitOpen:  # an earlier attempt's failure may have opened it
                self._fall_back_or_defer(generation, spec, met or "circuit open")
            except ProviderFailure as failure:
                met = failure.kind
                if not failure.retryable or attempt == spec.retry.attempts:
                    if failure.kind in ("unavailable", "timeout"):
                        self._fall_back_or_defer(generation, spec, failure.kind)
                    raise
                delay = self._delay(failure, spec, attempt)
                log.info(
                    "provider.retry",
                    extra={
                        "model": spec.key,
                        "attempt": attempt,
                        "kind": failure.kind,
                        "retry_in_s": delay,
                    },
                )
                self.sleep(delay)
                continue
            if not synchronous:
                generation = self._record(generation, submitted.job_id, attempt, spec, adapter)
            log.info(
                "provider.submitted",
                extra={
                    "model": spec.key,
                    "provider": spec.provider,
                    "job_id": submitted.job_id,
                    "attempt": attempt,
                },
            )
            return submitted, generation
        raise ProviderFailure("provider_error", "no attempt left")  # pragma: no cover

    @staticmethod
    def _delay(failure: ProviderFailure, spec: ModelSpec, attempt: int) -> float:
        if failure.retry_after_s is not None:  # the provider said when
            return failure.retry_after_s
        return float(spec.retry.backoff_ms / 1000 * 2 ** (attempt - 1))

    def _record(
        self,
        generation: Generation,
        job_id: str | None,
        attempt: int,
        spec: ModelSpec,
        adapter: ProviderAdapter,
    ) -> Generation:
        try:
            return self.generations.change(generation, lambda g: g.submitted(job_id, attempt))
        except GenerationFinished:  # cancelled while we submitted: take the job back
            if job_id:
                adapter.cancel(spec, job_id)
            raise

    def _fall_back_or_defer(self, generation: Generation, spec: ModelSpec, reason: str) -> None:
        if self.generations.generation(None, generation.id).cancel_requested:
            self.generations.change(generation.id, Generation.cancel)  # nobody has it
            raise GenerationFinished(f"generation {generation.id} was cancelled")
        if generation.allow_fallback:
            for key in spec.fallbacks:
                candidate = self.generations.catalogue.get(key)
                if self.breakers.is_open(candidate.provider):
                    continue
                try:
                    request = self.generations.normalised_for(generation, candidate)
                except InvalidRequest:
                    continue
                self._switch(generation.id, candidate, request, f"{spec.provider}: {reason}")
                log.info(
                    "provider.fell_back",
                    extra={"from_model": spec.key, "to_model": key, "reason": reason},
                )
                raise SwitchedModel
        delay = min(DEFER_MAX_S, DEFER_S * 2 ** min(generation.deferrals, 10))
        self._defer(
            generation, f"{spec.provider} is unavailable", f"({reason})", delay, failure=reason
        )

    def wait_for_slot(self, generation: Generation, cap: int) -> None:
        """Its user has ``cap`` generations at providers: it waits in line for a slot."""
        why = f"waiting its turn: at most {cap} of your generations run at once"
        self._defer(generation, why, "", None, code="deadline_exceeded")

    def _defer(
        self,
        generation: Generation,
        why: str,
        detail: str,
        delay: float | None,
        code: str = "provider_unavailable",
        failure: str | None = None,
    ) -> None:
        """Records the deferral (or, past its limit, the failure) and raises :class:`Deferral`
        (or :class:`GenerationFinished`). ``failure``: what the provider's call met."""
        now = self.now()
        waiting: list[bool] = []

        def defer(g: Generation) -> None:
            waiting.append(
                g.defer(
                    why,
                    now=now,
                    retry_at=None if delay is None else now + timedelta(seconds=delay),
                    give_up_at=now + self.patience.defer_limit,
                    code=code,
                    failure=failure,
                )
            )

        self.generations.change(generation.id, defer)
        if not waiting[-1]:
            log.warning("generation.gave_up", extra={"reason": why})
            raise GenerationFinished(f"generation {generation.id} stopped waiting: {why}")
        log.info("generation.deferred", extra={"reason": f"{why} {detail}", "retry_in_s": delay})
        raise Deferral(
            f"{why} {detail}".strip(),
            delay,
            generation_id=generation.id,
            user_id=generation.user_id,
        )

    def _switch(self, generation_id: UUID, to: ModelSpec, request: Normalised, reason: str) -> None:
        def fall_back(generation: Generation) -> None:
            generation.fall_back(
                to.key,
                to.provider,
                reason,
                params=dict(request.params),
                negative_prompt=request.negative_prompt,
                cost=request.cost_units,
            )

        self.generations.change(generation_id, fall_back)
