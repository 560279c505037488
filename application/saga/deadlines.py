"""How long a generation may take, and the sweep that ends one that took longer.

Every unfinished status has a deadline: a deferred generation gives up ``defer_limit`` after
its first deferral; any other one may stay in its status (``requested`` to ``processing``, or
``cancelling``) for its model's total timeout plus ``margin``. The generations projection keeps
each one's deadline in an indexed column, which the scheduler's sweep reads to find candidates;
the aggregate decides (:meth:`domain.generation.Generation.expire`), so a late sweep of a
generation that has since finished changes nothing. Settlement then releases its hold.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from application.catalogue import Catalogue, ModelSpec, UnknownModel
from application.generations import GenerationsApplication
from application.providers import ProviderDirectory, ProviderFailure
from domain.generation import Generation

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Patience:
    """``defer_limit``: how long a deferred generation waits at most (from its first deferral);
    ``margin``: what any other status gets beyond its model's total timeout."""

    defer_limit: timedelta = timedelta(hours=1)
    margin: timedelta = timedelta(seconds=60)

    def allowance(self, spec: ModelSpec) -> timedelta:
        return timedelta(seconds=spec.timeouts.total_s) + self.margin

    def allowance_of(self, catalogue: Catalogue) -> Callable[[str], timedelta]:
        """The allowance by model key (an unknown model gets the longest of the catalogue)."""
        longest = max(self.allowance(spec) for spec in catalogue)

        def allowance(model: str) -> timedelta:
            try:
                return self.allowance(catalogue.get(model))
            except UnknownModel:
                return longest

        return allowance


class Deadlines:
    """The sweep's use case: ends a generation past its deadline (the aggregate decides), and
    asks its provider, best effort, to drop the job."""

    def __init__(
        self,
        generations: GenerationsApplication,
        providers: ProviderDirectory,
        patience: Patience,
        now: Clock = utc_now,
    ) -> None:
        self.generations, self.providers = generations, providers
        self.allowance = patience.allowance_of(generations.catalogue)
        self.now = now

    def expire(self, generation_id: UUID) -> bool:
        """``True`` when it was past its deadline and has now ended."""
        ended: list[Generation] = []
        produced = False  # past the provider (processing): no job left to cancel

        def expire(generation: Generation) -> None:
            nonlocal produced
            produced = generation.result is not None
            if generation.expire(self.now(), self.allowance(generation.model)):
                ended.append(generation)

        self.generations.change(generation_id, expire)
        if not ended:
            return False
        generation = ended[-1]
        log.warning(
            "generation.expired",
            extra={
                "generation_id": str(generation.id),
                "status": generation.status,
                "job_id": generation.job_id,
                "error": generation.error,
            },
        )
        if generation.job_id and not produced:
            spec = self.generations.catalogue.get(generation.model)
            with contextlib.suppress(ProviderFailure):  # best effort: it bills us, not the user
                self.providers.for_model(spec).cancel(spec, generation.job_id)
        return True
