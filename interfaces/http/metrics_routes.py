"""``GET /metrics``: Prometheus text for the whole platform on this host.

What the processes counted (summed from the shared samples directory, see
:mod:`infrastructure.metrics`), then what the platform's shared state says at this moment:
breakers (Redis), queues (Redis), projection lag and stuck generations (PostgreSQL). Those are
read on every scrape, so every API process answers the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis
import structlog
from litestar import Response, get
from litestar.di import NamedDependency
from prometheus_client.core import GaugeMetricFamily, Metric
from psycopg_pool import AsyncConnectionPool

from infrastructure.broker import queue_depths
from infrastructure.metrics import CONTENT_TYPE_LATEST, exposition, gauge
from projections import generation_queries, webhook_queries
from projections.base import ProjectionView
from projections.position_queries import log_head, projected_to

log = structlog.get_logger(__name__)
#: What a scrape waits for the shared state at most (a slow part is left out, not waited on).
SCRAPE_TIMEOUT_S = 3.0
#: Breaker states, one series each (1 for the state it is in).
BREAKER_STATES = ("closed", "open", "half_open")


@dataclass(frozen=True, slots=True)
class MetricsSources:
    pool: AsyncConnectionPool
    redis: aioredis.Redis
    namespace: str
    projections: Mapping[str, type[ProjectionView]]
    #: Each provider's breaker state ("closed", "open" or "half_open").
    breakers: Callable[[], Awaitable[Mapping[str, str]]]


async def _lag(sources: MetricsSources) -> Metric:
    heads: dict[str, int] = {}
    lag: dict[str, float] = {}
    for name, view in sources.projections.items():
        if view.upstream not in heads:
            heads[view.upstream] = await log_head(sources.pool, view.upstream)
        lag[name] = max(0, heads[view.upstream] - await projected_to(sources.pool, view))
    return gauge(
        "pixevo_projection_lag_events",
        "Events of its upstream log a projection has not processed yet",
        "projection",
        lag,
    )


async def _queues(sources: MetricsSources) -> Metric:
    depths = await queue_depths(sources.redis, sources.namespace)
    return gauge(
        "pixevo_queue_messages",
        "Messages in a queue not yet acknowledged (waiting, delayed or being processed)",
        "queue",
        {k: float(v) for k, v in depths.items()},
    )


async def _breakers(sources: MetricsSources) -> Metric:
    return _one_hot(await sources.breakers())


def _one_hot(states: Mapping[str, str]) -> Metric:
    family = GaugeMetricFamily(
        "pixevo_provider_breaker_state",
        "A provider's circuit breaker state (1 for the state it is in)",
        labels=["provider", "state"],
    )
    for provider, current in sorted(states.items()):
        for state in BREAKER_STATES:
            family.add_metric([provider, state], 1.0 if state == current else 0.0)
    return family


async def _overdue(sources: MetricsSources) -> Metric:
    count = await generation_queries.count_overdue(sources.pool, datetime.now(UTC))
    return gauge(
        "pixevo_generations_overdue",
        "Unfinished generations past their deadline (the sweep ends them; a lasting count "
        "means it is not running)",
        "",
        {"": float(count)},
    )


async def _webhooks_failing(sources: MetricsSources) -> Metric:
    count = await webhook_queries.count_failing_endpoints(sources.pool)
    return gauge(
        "pixevo_webhook_endpoints_failing",
        "Active webhook endpoints whose oldest undelivered message has failed at least once",
        "",
        {"": float(count)},
    )


async def scraped(sources: MetricsSources) -> list[Metric]:
    """The gauges of the shared state; a part that fails or is slow is logged and left out."""
    parts: list[Awaitable[Metric]] = [
        _lag(sources),
        _queues(sources),
        _breakers(sources),
        _overdue(sources),
        _webhooks_failing(sources),
    ]
    results = await asyncio.gather(
        *(asyncio.wait_for(part, SCRAPE_TIMEOUT_S) for part in parts), return_exceptions=True
    )
    families: list[Metric] = []
    for result in results:
        if isinstance(result, BaseException):
            log.warning("metrics.part_failed", error=repr(result)[:200])
        else:
            families.append(result)
    return families


#: Prometheus' text format (Litestar adds the charset).
TEXT_FORMAT = CONTENT_TYPE_LATEST.split("; charset")[0]


@get("/metrics", exclude_from_auth=True, media_type=TEXT_FORMAT)
async def metrics(metrics_sources: NamedDependency[MetricsSources]) -> Response[bytes]:
    """Prometheus text format: every process's counters and the shared state's gauges."""
    body = exposition(await scraped(metrics_sources))
    return Response(body, media_type=TEXT_FORMAT)


ROUTES = [metrics]
