"""Prometheus metrics: what each process counts, and what the API reads at scrape time.

Counters and histograms are counted where things happen: a worker's reactions and provider
calls, the generations projection's final statuses (``pixevo_generations_total``, counted once
committed, by the live runner only), the dispatcher's webhook deliveries, the API's requests.
The processes the launcher starts share one ``PROMETHEUS_MULTIPROC_DIR``; the API's
``GET /metrics`` sums every process's samples from it, then adds the gauges it reads from
PostgreSQL and Redis when scraped (breakers, queues, projection lag, stuck generations), so
every API process answers the same.

Labels are bounded sets (provider, model, operation, reaction, queue, projection, outcome,
route template); never a user's, a generation's or any other id.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from application.catalogue import ModelSpec
from application.normalise import Normalised
from application.ports import Deferral
from application.providers import (
    Output,
    ProgressSink,
    ProviderAdapter,
    ProviderFailure,
    Submitted,
)

__all__ = ["CONTENT_TYPE_LATEST", "exposition"]

#: Provider calls take from tens of milliseconds to minutes (video).
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

REACTIONS = Counter(
    "pixevo_reactions_total",
    "Reaction messages handled by the workers, by reaction and outcome",
    ["reaction", "outcome"],
)
REACTION_SECONDS = Histogram(
    "pixevo_reaction_duration_seconds",
    "Time a worker spent on one reaction message",
    ["reaction"],
    buckets=CALL_BUCKETS,
)
PROVIDER_CALLS = Counter(
    "pixevo_provider_calls_total",
    "Calls to AI providers, by provider, operation and outcome (ok or the failure's kind)",
    ["provider", "operation", "outcome"],
)
PROVIDER_SECONDS = Histogram(
    "pixevo_provider_call_duration_seconds",
    "Duration of calls to AI providers (wait: until the job ended)",
    ["provider", "operation"],
    buckets=CALL_BUCKETS,
)


def multiprocess() -> bool:
    """Whether this process writes its samples to the shared directory (decided by
    ``prometheus_client`` at import, from ``PROMETHEUS_MULTIPROC_DIR``)."""
    return values.ValueClass is not values.MutexValue


class _Gauges(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def exposition(scraped: list[Metric]) -> bytes:
    """The text of ``GET /metrics``: every process's counters (summed from the shared
    directory, or this process's own), then the gauges read at scrape time."""
    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        counted = generate_latest(registry)
    else:
        counted = generate_latest(REGISTRY)
    gauges = CollectorRegistry()
    gauges.register(_Gauges(scraped))
    return counted + generate_latest(gauges)


def gauge(name: str, documentation: str, label: str, values_by: dict[str, float]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=[label] if label else [])
    for key, value in sorted(values_by.items()):
        family.add_metric([key] if label else [], value)
    return family


@contextmanager
def reaction_timer(reaction: str) -> Iterator[None]:
    """Counts one reaction message by outcome (``done``, ``deferred``, ``error``) and times it."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "done"
    except Deferral:
        outcome = "deferred"
        raise
    finally:
        REACTIONS.labels(reaction, outcome).inc()
        REACTION_SECONDS.labels(reaction).observe(time.perf_counter() - started)


class MeteredAdapter:
    """A provider adapter whose calls are counted and timed per provider and operation."""

    def __init__(self, adapter: ProviderAdapter, provider: str) -> None:
        self.adapter, self.provider = adapter, provider

    @contextmanager
    def _measured(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except ProviderFailure as failure:
            outcome = failure.kind
            raise
        finally:
            PROVIDER_CALLS.labels(self.provider, operation, outcome).inc()
            PROVIDER_SECONDS.labels(self.provider, operation).observe(time.perf_counter() - started)

    def submit(self, model: ModelSpec, request: Normalised) -> Submitted:
        with self._measured("submit"):
            return self.adapter.submit(model, request)

    def wait(
        self, model: ModelSpec, job_id: str, on_progress: ProgressSink | None = None
    ) -> Output:
        with self._measured("wait"):
            return self.adapter.wait(model, job_id, on_progress)

    def cancel(self, model: ModelSpec, job_id: str) -> bool:
        with self._measured("cancel"):
            return self.adapter.cancel(model, job_id)

    def fetch(self, output: Output) -> bytes:
        with self._measured("fetch"):
            return self.adapter.fetch(output)
