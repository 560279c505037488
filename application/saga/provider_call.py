"""How a request reaches a provider: the call policy of the ``Generate`` reaction.

    submit ──▶ breaker open ─────────────────────────────▶ fall back, or defer
       │──▶ retryable failure ──▶ wait (Retry-After, or the model's backoff) ──▶ submit again
       │        └── attempts used up: unavailable / timeout ──▶ fall back, or defer
       └──▶ accepted: the job id is recorded before anyone waits on it

A fallback hands the request, normalised again for the equivalent model, to that model (the
only time a stored request is normalised again: see ``GenerationsApplication.normalised_for``)
and records it with its cost there; a deferral records why and asks the broker to run the
message again later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from uuid import UUID

from application.catalogue import ModelSpec
from application.generations import GenerationsApplication
from application.normalise import InvalidRequest, Normalised
from application.ports import CircuitBreakers, CircuitOpen, Deferral
from application.providers import ProviderAdapter, ProviderFailure, Submitted
from domain.generation import Generation, GenerationFinished

#: How long a deferred generation waits before it tries its provider again.
DEFER_S = 5.0


class SwitchedModel(Exception):
    """The generation fell back to another model: run it again with that one."""


class ProviderCall:
    """Submits a generation's request with its model's retry policy and circuit breaker."""

    def __init__(
        self,
        generations: GenerationsApplication,
        breakers: CircuitBreakers,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.generations, self.breakers, self.sleep = generations, breakers, sleep

    def submit(
        self, generation: Generation, spec: ModelSpec, adapter: ProviderAdapter
    ) -> Submitted:
        """The accepted job (recorded); raises :class:`SwitchedModel` after a fallback,
        :class:`Deferral` while no provider can take it, :class:`ProviderFailure` when it
        failed for good."""
        request = self.generations.sent_request(generation)
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
                self.sleep(self._delay(failure, spec, attempt))
                continue
            self._record(generation.id, submitted.job_id, attempt, spec, adapter)
            return submitted
        raise ProviderFailure("provider_error", "no attempt left")  # pragma: no cover

    @staticmethod
    def _delay(failure: ProviderFailure, spec: ModelSpec, attempt: int) -> float:
        if failure.retry_after_s is not None:  # the provider said when
            return failure.retry_after_s
        return float(spec.retry.backoff_ms / 1000 * 2 ** (attempt - 1))

    def _record(
        self,
        generation_id: UUID,
        job_id: str | None,
        attempt: int,
        spec: ModelSpec,
        adapter: ProviderAdapter,
    ) -> None:
        try:
            self.generations.change(generation_id, lambda g: g.submitted(job_id, attempt))
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
                    request = self.generations.normalised_for(generation, candidate)
                except InvalidRequest:
                    continue
                self._switch(generation.id, candidate, request, f"{spec.provider}: {reason}")
                raise SwitchedModel
        self.generations.change(generation.id, lambda g: g.defer(f"{spec.provider} is unavailable"))
        raise Deferral(f"{spec.provider} is unavailable ({reason})", DEFER_S)

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
