"""Provider health: the provider_health projection of the generation events, its windows,
percentiles, last errors and sparkline series; and breaker states read from Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import pytest
import redis.asyncio as aioredis
from litestar.testing import TestClient
from psycopg_pool import AsyncConnectionPool

from application.ports import CircuitOpen
from application.providers import ProviderFailure
from domain.generation import Generation
from domain.ids import uuid7
from infrastructure.breakers import breaker_namespace, breaker_states
from interfaces.bootstrap import Container
from interfaces.http.app import create_app
from projections import provider_health_queries as health

pytestmark = pytest.mark.integration
T = TypeVar("T")
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Item:
    notification_id: int
    event: Any


class Story:
    """The events of some generations, numbered as a notification log would."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self._versions: dict[UUID, int] = {}

    def add(self, key: UUID, kind: type[Any], at: datetime, **fields: Any) -> None:
        version = self._versions.get(key, 2) + 1
        self._versions[key] = version
        event = kind(originator_id=key, originator_version=version, timestamp=at, **fields)
        self.items.append(Item(len(self.items) + 1, event))

    def queued(
        self, at: datetime, model: str = "flux-schnell", provider: str = "replicate"
    ) -> UUID:
        key = uuid7()
        self.add(key, Generation.Queued, at, model=model, provider=provider)
        return key

    def produced(self, key: UUID, at: datetime, provider_ms: int) -> None:
        self.add(
            key,
            Generation.Produced,
            at,
            storage_key="k",
            width=1,
            height=1,
            content_type="image/png",
            size_bytes=1,
            provider_ms=provider_ms,
        )

    def ok(self, at: datetime, ms: int, model: str = "flux-schnell") -> UUID:
        key = self.queued(at - timedelta(seconds=1), model)
        self.add(key, Generation.Submitted, at - timedelta(milliseconds=ms), job_id="j", attempt=1)
        self.produced(key, at, ms)
        return key


def project(container: Container, story: Story) -> None:
    runner = container.projection("provider_health")
    runner.start()
    with runner.view.datastore.transaction(commit=True) as curs:
        runner.view.project(curs, story.items)


def read(container: Container, query: Callable[[AsyncConnectionPool], Awaitable[T]]) -> T:
    async def run() -> T:
        async with AsyncConnectionPool(container.database_url, min_size=1, open=False) as pool:
            return await query(pool)

    return asyncio.run(run())


def test_calls_windows_percentiles_and_last_errors(container: Container) -> None:
    story = Story()
    for n in range(1, 11):  # ten calls of 100 .. 1000 ms in the last 5 minutes
        story.ok(NOW - timedelta(minutes=4), 100 * n)
    story.ok(NOW - timedelta(minutes=40), 5000)  # in the hour, not in 5 minutes
    story.ok(NOW - timedelta(hours=2), 9000)  # only in the series

    # unavailable after its retries: deferred (a call), deferred behind the open breaker (none),
    # then it gives up (no call either)
    down = story.queued(NOW - timedelta(minutes=3))
    story.add(
        down,
        Generation.Deferred,
        NOW - timedelta(minutes=3),
        reason="replicate is unavailable",
        failure="unavailable",
    )
    story.add(
        down,
        Generation.Deferred,
        NOW - timedelta(minutes=2),
        reason="replicate is unavailable",
        failure="circuit open",
    )
    story.add(
        down,
        Generation.Failed,
        NOW - timedelta(minutes=1),
        code="provider_unavailable",
        message="replicate is unavailable; gave up",
    )
    # timed out on flux-dev, fell back to fal, produced there
    moved = story.queued(NOW - timedelta(minutes=2), model="flux-dev")
    story.add(
        moved,
        Generation.FellBack,
        NOW - timedelta(minutes=2),
        from_model="flux-dev",
        to_model="flux-dev-fal",
        provider="fal",
        reason="replicate: timeout",
    )
    story.add(moved, Generation.Submitted, NOW - timedelta(seconds=70), job_id="f", attempt=2)
    story.produced(moved, NOW - timedelta(seconds=60), 10_000)
    # accepted, then failed at the provider 30 minutes ago (latency from its acceptance)
    broken = story.queued(NOW - timedelta(minutes=31), model="flux-dev")
    story.add(broken, Generation.Submitted, NOW - timedelta(minutes=31), job_id="b", attempt=1)
    story.add(
        broken, Generation.Failed, NOW - timedelta(minutes=30), code="provider_error", message="x"
    )
    # the provider's safety filter refused it: an answer, not a failure
    refused = story.queued(NOW - timedelta(minutes=1))
    story.add(refused, Generation.Submitted, NOW - timedelta(minutes=1), job_id="r", attempt=1)
    story.add(
        refused,
        Generation.Blocked,
        NOW - timedelta(seconds=50),
        layer="provider",
        reason="nsfw",
        version="replicate/flux-schnell",
        score=None,
        charged=0,
        policy="waive",
    )
    story.produced(uuid7(), NOW - timedelta(minutes=1), 0)  # a cache hit: never queued
    waiting = story.queued(NOW - timedelta(minutes=1))  # waits for a slot, then is cancelled
    story.add(waiting, Generation.Deferred, NOW - timedelta(minutes=1), reason="waiting its turn")
    story.add(waiting, Generation.Cancelled, NOW - timedelta(seconds=30))

    project(container, story)
    project(container, story)  # a replayed batch adds nothing
    summary = read(container, lambda pool: health.summary(pool, NOW))

    replicate = summary[("replicate", None)]
    # 10 ok + unavailable + timeout + rejected in 5 minutes; + the 5 s call and the error in 1 h
    five = replicate["last_5m"]
    assert (five.calls, five.succeeded, five.rejected, five.failed) == (13, 10, 1, 2)
    assert five.success_rate == round(10 / 13, 4)
    assert (five.p50_ms, five.p95_ms) == (550.0, 955.0)  # percentile_cont of 100 .. 1000
    hour = replicate["last_1h"]
    assert (hour.calls, hour.succeeded, hour.failed) == (15, 11, 3)
    assert summary[("replicate", "flux-dev")]["last_5m"].failed == 1  # the timeout
    assert summary[("replicate", "flux-dev")]["last_1h"].failed == 2  # and the provider error
    fal = summary[("fal", "flux-dev-fal")]["last_5m"]
    assert (fal.calls, fal.succeeded, fal.p50_ms) == (1, 1, 10_000.0)  # the worker's measure
    assert ("replicate", "sdxl-lightning") not in summary

    errors = read(container, lambda pool: health.last_errors(pool, NOW))
    assert errors[("replicate", None)].generation_id == moved  # the latest failure of them all
    assert errors[("replicate", "flux-schnell")].kind == "unavailable"
    assert "replicate is unavailable" in errors[("replicate", "flux-schnell")].message
    latest_dev = errors[("replicate", "flux-dev")]
    assert (latest_dev.generation_id, latest_dev.kind) == (moved, "timeout")
    assert ("fal", None) not in errors

    recent = read(container, lambda pool: health.recent_errors(pool, NOW, since=timedelta(hours=3)))
    assert [e.generation_id for e in recent] == [moved, down, broken]

    series = read(container, lambda pool: health.series(pool, NOW))
    buckets = series[("replicate", None)]
    assert len(buckets) == health.BUCKETS and buckets[-1].start == NOW - health.BUCKET
    assert (buckets[-1].calls, buckets[-1].failed) == (13, 2)
    assert buckets[-1].p50_ms == 550.0
    assert [b.calls for b in buckets[:-1]] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1]
    assert buckets[4].p50_ms == 9000.0  # two hours ago

    with container.pool.connection() as conn:
        in_flight = conn.execute("SELECT count(*) FROM proj_provider_health.in_flight").fetchone()
    assert in_flight == (0,)  # every generation left its provider


def test_a_failure_with_no_accepted_call_has_no_latency_and_a_stuck_one_times_out(
    container: Container,
) -> None:
    story = Story()
    refused = story.queued(NOW - timedelta(minutes=2))
    story.add(
        refused,
        Generation.Failed,
        NOW - timedelta(minutes=2),
        code="invalid_request",
        message="bad size",
    )
    stuck = story.queued(NOW - timedelta(minutes=3), model="recraft-v3", provider="fal")
    story.add(stuck, Generation.Submitted, NOW - timedelta(minutes=3), job_id="s", attempt=1)
    story.add(
        stuck, Generation.Failed, NOW - timedelta(minutes=1), code="deadline_exceeded", message="d"
    )
    never = story.queued(NOW - timedelta(minutes=3), model="recraft-v3", provider="fal")
    story.add(
        never, Generation.Failed, NOW - timedelta(minutes=1), code="deadline_exceeded", message="q"
    )
    project(container, story)
    with container.pool.connection() as conn:
        rows = conn.execute(
            "SELECT generation_id, outcome, latency_ms FROM proj_provider_health.calls "
            "ORDER BY position"
        ).fetchall()
    assert rows == [(refused, "rejected", None), (stuck, "timeout", 120_000)]


def test_breaker_states_read_from_redis_without_touching_them(container: Container) -> None:
    breakers = container.breakers
    for _ in range(breakers.fail_max):  # unhealthy failures in a row open it (the call that
        # opens it raises its own failure: it was made)
        with pytest.raises(ProviderFailure), breakers.guard("replicate"):
            raise ProviderFailure("unavailable", "503")
    with pytest.raises(CircuitOpen), breakers.guard("replicate"):
        pytest.fail("an open breaker lets no call through")
    with pytest.raises(ProviderFailure), breakers.guard("fal"):  # one failure: still closed
        raise ProviderFailure("timeout", "slow")
    namespace = breaker_namespace(container.settings.redis_namespace)

    async def states(now: datetime | None = None) -> dict[str, Any]:
        client = aioredis.Redis.from_url(container.redis_url)
        try:
            found = await breaker_states(client, namespace, ["replicate", "fal", "openai"], now=now)
            untouched = await client.keys(f"{namespace}:openai:*")
        finally:
            await client.aclose()
        return {"found": found, "untouched": untouched}

    read_now = asyncio.run(states())
    found = read_now["found"]
    assert found["replicate"].state == "open" and found["replicate"].failures == 3
    opened_at = found["replicate"].opened_at
    assert opened_at is not None and abs((datetime.now(UTC) - opened_at).total_seconds()) < 60
    assert found["replicate"].retry_at == opened_at + timedelta(seconds=breakers.reset_timeout_s)
    assert (found["fal"].state, found["fal"].failures) == ("closed", 1)
    assert (found["openai"].state, found["openai"].failures) == ("closed", 0)
    assert read_now["untouched"] == []  # reading a breaker never used creates nothing
    later = asyncio.run(states(opened_at + timedelta(seconds=breakers.reset_timeout_s + 1)))
    assert later["found"]["replicate"].state == "half-open"  # the next call is a trial
    assert breakers.is_open("replicate")  # reading changed nothing for the workers


# -- the routes ------------------------------------------------------------------------------


def assert_problem(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"]


def test_the_admin_route_and_page_show_every_provider_its_failures_and_its_breaker(
    container: Container,
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)  # the route reads the clock
    story = Story()
    story.ok(now - timedelta(seconds=30), 1200)
    down = story.queued(now - timedelta(seconds=20))
    story.add(
        down,
        Generation.Deferred,
        now - timedelta(seconds=10),
        reason="replicate is unavailable",
        failure="unavailable",
    )
    project(container, story)
    for _ in range(container.breakers.fail_max):
        with pytest.raises(ProviderFailure), container.breakers.guard("replicate"):
            raise ProviderFailure("unavailable", "503")
    admin = container.users.create("root@example.com", admin=True).api_key
    someone = container.users.create("someone@example.com").api_key

    with TestClient(create_app(container)) as client:
        as_admin = {"Authorization": f"Bearer {admin}"}
        body = client.get("/v1/admin/providers", headers=as_admin)
        assert body.status_code == 200, body.text
        providers = {p["provider"]: p for p in body.json()["providers"]}
        catalogue = {spec.provider for spec in container.catalogue}
        assert set(providers) == catalogue  # with calls or not
        replicate = providers["replicate"]
        assert replicate["breaker"]["state"] == "open"
        assert replicate["breaker"]["failures"] == container.breakers.fail_max
        assert replicate["last_5m"] == {
            "calls": 2,
            "succeeded": 1,
            "rejected": 0,
            "failed": 1,
            "success_rate": 0.5,
            "p50_ms": 1200.0,
            "p95_ms": 1200.0,
        }
        assert replicate["last_error"]["generation_id"] == str(down)
        assert replicate["last_error"]["kind"] == "unavailable"
        models = {m["model"]: m for m in replicate["models"]}
        assert {s.key for s in container.catalogue if s.provider == "replicate"} == set(models)
        assert models["flux-schnell"]["last_1h"]["failed"] == 1
        assert models["flux-dev"]["last_1h"]["calls"] == 0
        assert models["flux-dev"]["last_error"] is None
        assert providers["fal"]["breaker"]["state"] == "closed"
        assert providers["fal"]["last_5m"]["success_rate"] is None

        someone_token = client.post(
            "/v1/stream-tokens", headers={"Authorization": f"Bearer {someone}"}
        ).json()["token"]
        assert_problem(
            client.get("/v1/admin/providers", headers={"Authorization": f"Bearer {someone}"}), 403
        )
        assert_problem(client.get(f"/v1/admin/providers/page?token={someone_token}"), 403)
        assert_problem(client.get("/v1/admin/providers/page"), 401)
        assert_problem(client.get("/v1/admin/providers?token=" + someone_token), 401)  # no header

        token = client.post("/v1/stream-tokens", headers=as_admin).json()["token"]
        page = client.get(f"/v1/admin/providers/page?token={token}")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        assert 'data-breaker="open"' in html and str(down) in html
        assert "50.0 %" in html and "<polyline" in html
        schema = client.get("/schema/openapi.json").json()["paths"]
        assert "/v1/admin/providers" in schema and "/v1/admin/providers/page" in schema
