"""Provider health for operators (API.md, Operations): ``GET /v1/admin/providers`` and the page
``GET /v1/admin/providers/page`` a browser opens (with ``?token=``, a stream token of an admin,
since a browser's address bar sends no Bearer header).

Both are computed from the provider_health projection (PostgreSQL) and the breakers' shared
storage (Redis) only, so every API process answers the same. Every provider and model of the
catalogue is listed, with or without calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import jinja2
import msgspec
import redis.asyncio as aioredis
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.types import ControllerRouterHandler
from psycopg_pool import AsyncConnectionPool

from infrastructure.breakers import BreakerState, breaker_states
from interfaces.http.auth import STREAM_OPT, TokenQuery, admin_only
from projections import provider_health_queries as queries
from projections.provider_health_queries import Bucket, CallError, Key, Window

#: How far back the page lists errors, and how many.
PAGE_ERRORS_SINCE = timedelta(hours=3)
PAGE_ERRORS = 30


class ProviderHealthServices:
    """What the routes read: the API's pool and Redis client, where the breakers live, and
    the catalogue's providers and models."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        redis: aioredis.Redis,
        breaker_namespace: str,
        models: Iterable[tuple[str, str]],
    ) -> None:
        self.pool, self.redis, self.breaker_namespace = pool, redis, breaker_namespace
        self.models = sorted(set(models))


Services = NamedDependency[ProviderHealthServices]


# -- the report, from the projection and Redis ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """One provider's (``model`` ``None``) or one model's figures."""

    provider: str
    model: str | None
    windows: dict[str, Window]
    last_error: CallError | None
    series: list[Bucket]


@dataclass(frozen=True, slots=True)
class ProviderReport:
    provider: str
    breaker: BreakerState
    overall: Health
    models: list[Health]
    errors: list[CallError]


async def report(
    services: ProviderHealthServices, now: datetime, *, errors: bool = False
) -> list[ProviderReport]:
    """Every provider of the catalogue or of the projection, with each of its models.
    ``errors``: with each provider's recent failed calls too (the page lists them)."""
    pool = services.pool
    summary, last, series, recent = await asyncio.gather(
        queries.summary(pool, now),
        queries.last_errors(pool, now),
        queries.series(pool, now),
        queries.recent_errors(pool, now, since=PAGE_ERRORS_SINCE, limit=PAGE_ERRORS)
        if errors
        else _nothing(),
    )
    pairs = set(services.models) | {(p, m) for p, m in summary if m is not None}
    providers = sorted({p for p, _ in pairs} | {p for p, _ in summary})
    breakers = await breaker_states(services.redis, services.breaker_namespace, providers)

    def health(key: Key) -> Health:
        return Health(
            provider=key[0],
            model=key[1],
            windows=summary.get(key) or dict.fromkeys(queries.WINDOWS, queries.EMPTY),
            last_error=last.get(key),
            series=series.get(key) or queries.empty_series(now),
        )

    return [
        ProviderReport(
            provider=provider,
            breaker=breakers[provider],
            overall=health((provider, None)),
            models=[health((p, m)) for p, m in sorted(pairs) if p == provider],
            errors=[e for e in recent if e.provider == provider],
        )
        for provider in providers
    ]


async def _nothing() -> list[CallError]:
    return []


# -- GET /v1/admin/providers --------------------------------------------------------------------


class WindowView(msgspec.Struct):
    calls: int
    succeeded: int
    rejected: int
    failed: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


class ErrorView(msgspec.Struct):
    message: str
    kind: str
    at: datetime
    generation_id: UUID
    model: str


class BreakerView(msgspec.Struct):
    state: str
    failures: int
    opened_at: datetime | None
    retry_at: datetime | None


class ModelStatus(msgspec.Struct):
    model: str
    last_5m: WindowView
    last_1h: WindowView
    last_error: ErrorView | None


class ProviderStatus(msgspec.Struct):
    provider: str
    breaker: BreakerView
    last_5m: WindowView
    last_1h: WindowView
    last_error: ErrorView | None
    models: list[ModelStatus]


class ProvidersHealth(msgspec.Struct):
    at: datetime
    providers: list[ProviderStatus]


def _window(window: Window) -> WindowView:
    return WindowView(
        calls=window.calls,
        succeeded=window.succeeded,
        rejected=window.rejected,
        failed=window.failed,
        success_rate=window.success_rate,
        p50_ms=window.p50_ms,
        p95_ms=window.p95_ms,
    )


def _error(error: CallError | None) -> ErrorView | None:
    if error is None:
        return None
    return ErrorView(error.message, error.kind, error.at, error.generation_id, error.model)


def _view(found: ProviderReport) -> ProviderStatus:
    breaker, overall = found.breaker, found.overall
    return ProviderStatus(
        provider=found.provider,
        breaker=BreakerView(breaker.state, breaker.failures, breaker.opened_at, breaker.retry_at),
        last_5m=_window(overall.windows["last_5m"]),
        last_1h=_window(overall.windows["last_1h"]),
        last_error=_error(overall.last_error),
        models=[
            ModelStatus(
                model=m.model or "",
                last_5m=_window(m.windows["last_5m"]),
                last_1h=_window(m.windows["last_1h"]),
                last_error=_error(m.last_error),
            )
            for m in found.models
        ],
    )


class ProviderHealthRoutes(Controller):
    path = "/v1/admin/providers"
    guards = [admin_only]

    @get("")
    async def providers(self, provider_health: Services) -> ProvidersHealth:
        """Per provider and model: calls, success rate and p50/p95 latency over the last 5
        minutes and hour, the last error; and each provider's breaker state."""
        now = datetime.now(UTC)
        return ProvidersHealth(now, [_view(p) for p in await report(provider_health, now)])

    @get("/page", opt=STREAM_OPT, media_type=MediaType.HTML)
    async def page(
        self,
        provider_health: Services,
        token: TokenQuery = None,  # noqa: ARG002 - read by the authentication middleware
    ) -> Response[str]:
        """The same as an HTML page for a browser (``?token=``: an admin's stream token), with
        latency sparklines over the last hours and the recent errors' generation ids."""
        now = datetime.now(UTC)
        found = await report(provider_health, now, errors=True)
        html = PAGE.render(now=now, providers=found, since=PAGE_ERRORS_SINCE, spark=sparkline)
        return Response(html, media_type=MediaType.HTML, headers={"Cache-Control": "no-store"})


ROUTES: list[ControllerRouterHandler] = [ProviderHealthRoutes]


# -- the page ---------------------------------------------------------------------------------

SPARK_W, SPARK_H = 180, 36


@dataclass(frozen=True, slots=True)
class Sparkline:
    p50: str  # polyline points
    p95: str
    dots: list[tuple[str, str]]  # the p50 points, visible even where a line has one point
    failures: list[tuple[float, float]]  # (x, width) of buckets with failed calls
    top_ms: float


def sparkline(buckets: list[Bucket]) -> Sparkline:
    """The points of the p50 and p95 lines (buckets without successful calls are skipped) and
    where the buckets with failures are, scaled to the sparkline's box."""
    top = max((b.p95_ms or 0.0 for b in buckets), default=0.0) or 1.0
    step = SPARK_W / max(len(buckets), 1)

    def points(values: list[float | None]) -> list[tuple[str, str]]:
        return [
            (f"{(n + 0.5) * step:.1f}", f"{SPARK_H - 2 - (v / top) * (SPARK_H - 4):.1f}")
            for n, v in enumerate(values)
            if v is not None
        ]

    p50 = points([b.p50_ms for b in buckets])
    return Sparkline(
        p50=" ".join(f"{x},{y}" for x, y in p50),
        p95=" ".join(f"{x},{y}" for x, y in points([b.p95_ms for b in buckets])),
        dots=p50,
        failures=[(n * step, step) for n, b in enumerate(buckets) if b.failed],
        top_ms=top,
    )


_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="30">
<title>Provider health</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h2 { margin: 1.5rem 0 .4rem; }
table { border-collapse: collapse; margin-bottom: .6rem; }
th, td { border-bottom: 1px solid #ddd; padding: .25rem .6rem; text-align: right; }
th:first-child, td:first-child, td.error { text-align: left; }
.breaker { border-radius: .8rem; padding: .1rem .6rem; font-size: 12px; color: #fff; }
.breaker-closed { background: #2e7d32; } .breaker-open { background: #c62828; }
.breaker-half-open { background: #ef6c00; }
.bad { color: #c62828; font-weight: 600; } .muted { color: #888; }
code { font-size: 12px; }
</style>
</head>
<body>
<h1>Provider health</h1>
<p class="muted">At {{ now.strftime("%Y-%m-%d %H:%M:%S") }} UTC; refreshes every 30 s. Latency
of the calls that produced; sparklines: p50 (blue) and p95 (orange) per 15 minutes over the last
3 hours, red where calls failed.</p>
{% macro rate(w) -%}
{% if w.calls %}{{ "%.1f"|format(100 * w.success_rate) }} %{% else %}&ndash;{% endif %}
{%- endmacro %}
{% macro ms(v) -%}
{% if v is none %}&ndash;{% else %}{{ "%.0f"|format(v) }} ms{% endif %}
{%- endmacro %}
{% macro row(h, label) -%}
{% set five = h.windows["last_5m"] %}{% set hour = h.windows["last_1h"] %}
<tr data-model="{{ h.model or '' }}">
<td>{{ label }}</td>
<td class="calls-5m">{{ five.calls }}</td>
<td class="success-5m">{{ rate(five) }}</td>
<td class="failed-5m{% if five.failed %} bad{% endif %}">{{ five.failed }}</td>
<td>{{ ms(five.p50_ms) }} / {{ ms(five.p95_ms) }}</td>
<td class="calls-1h">{{ hour.calls }}</td>
<td class="success-1h">{{ rate(hour) }}</td>
<td class="failed-1h{% if hour.failed %} bad{% endif %}">{{ hour.failed }}</td>
<td>{{ ms(hour.p50_ms) }} / {{ ms(hour.p95_ms) }}</td>
<td>{% set s = spark(h.series) %}
<svg width="180" height="36" viewBox="0 0 180 36" role="img"
 aria-label="p50 and p95 latency, up to {{ '%.0f'|format(s.top_ms) }} ms">
{% for x, w in s.failures %}<rect x="{{ '%.1f'|format(x) }}" y="0" width="{{ '%.1f'|format(w) }}"
 height="36" fill="#fdd"/>{% endfor %}
<polyline points="{{ s.p95 }}" fill="none" stroke="#ef6c00" stroke-width="1.5"/>
<polyline points="{{ s.p50 }}" fill="none" stroke="#1565c0" stroke-width="1.5"/>
{% for x, y in s.dots %}<circle cx="{{ x }}" cy="{{ y }}" r="1.5" fill="#1565c0"/>{% endfor %}
</svg></td>
<td class="error">{% if h.last_error %}{{ h.last_error.kind }} at
{{ h.last_error.at.strftime("%H:%M:%S") }}{% else %}<span class="muted">none</span>{% endif %}</td>
</tr>
{%- endmacro %}
{% for p in providers %}
<section class="provider" id="provider-{{ p.provider }}" data-provider="{{ p.provider }}">
<h2>{{ p.provider }}
<span class="breaker breaker-{{ p.breaker.state }}" data-breaker="{{ p.breaker.state }}">breaker
{{ p.breaker.state }}</span>
{% if p.breaker.failures %}<small class="muted">{{ p.breaker.failures }} failure(s) counted
{%- if p.breaker.opened_at and p.breaker.state != "closed" %}, opened
{{ p.breaker.opened_at.strftime("%H:%M:%S") }}{% endif %}</small>{% endif %}
</h2>
<table>
<thead><tr><th></th><th colspan="4">last 5 minutes</th><th colspan="4">last hour</th>
<th>last 3 hours</th><th></th></tr>
<tr><th>model</th><th>calls</th><th>success</th><th>failed</th><th>p50 / p95</th>
<th>calls</th><th>success</th><th>failed</th><th>p50 / p95</th><th>latency</th>
<th>last error</th></tr></thead>
<tbody>
{{ row(p.overall, "all models") }}
{% for m in p.models %}{{ row(m, m.model) }}{% endfor %}
</tbody>
</table>
{% if p.errors %}
<table class="errors">
<thead><tr><th>failed at</th><th>model</th><th>kind</th><th>generation</th><th>message</th></tr>
</thead>
<tbody>
{% for e in p.errors %}
<tr><td>{{ e.at.strftime("%H:%M:%S") }}</td><td>{{ e.model }}</td><td>{{ e.kind }}</td>
<td><code class="generation-id">{{ e.generation_id }}</code></td>
<td class="error">{{ e.message }}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}<p class="muted">No failed calls in the last {{ (since.total_seconds() // 3600)|int }}
hours.</p>{% endif %}
</section>
{% endfor %}
</body>
</html>
"""

PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(_TEMPLATE)
