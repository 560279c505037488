"""Per-user rate limits on the work-creating routes, counted in one Redis for every API app."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from litestar.testing import TestClient

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from interfaces.http.app import create_app
from interfaces.http.ratelimit import Decision, RateLimiter

pytestmark = pytest.mark.integration

#: A rate so slow that no token comes back while a test runs: the burst is all there is.
SLOW = 0.001
BURST = 5
BODY = {"model": "sim-instant", "prompt": "a kite"}


@pytest.fixture
def limited(settings: Settings) -> Iterator[Container]:
    container = build(replace(settings, rate_limit_per_s=SLOW, rate_limit_burst=BURST))
    yield container
    container.close()


def bearer(container: Container, email: str, credits: str = "100") -> dict[str, str]:
    key = container.users.create(email, credits).api_key
    container.projection("ledger").catch_up()  # for the 402 pre-check
    return {"Authorization": f"Bearer {key}"}


def create(client: TestClient[Any], headers: dict[str, str]) -> Any:
    return client.post("/v1/generations", json=BODY, headers=headers)


def test_a_burst_beyond_the_limit_answers_429_with_headers(limited: Container) -> None:
    ada = bearer(limited, "ada@example.com")
    with TestClient(create_app(limited)) as client:
        answers = [create(client, ada) for _ in range(BURST)]
        refused = create(client, ada)
        # an answer the limit did not refuse carries the headers too, whatever its status
        invalid = client.post("/v1/generations", json={"model": "NO"}, headers=ada)
    assert [a.status_code for a in answers] == [202] * BURST, answers[-1].text
    assert [int(a.headers["ratelimit-remaining"]) for a in answers] == [4, 3, 2, 1, 0]
    assert {a.headers["ratelimit-limit"] for a in answers} == {str(BURST)}
    assert all(int(a.headers["ratelimit-reset"]) > 0 for a in answers)
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["status"] == 429 and refused.json()["title"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-remaining"] == "0"
    assert invalid.status_code == 429  # it still counts (and is refused first)


def test_two_api_apps_share_one_count_and_other_users_are_unaffected(
    limited: Container,
) -> None:
    ada, bo = bearer(limited, "ada@example.com"), bearer(limited, "bo@example.com")
    with ExitStack() as stack:
        first = stack.enter_context(TestClient(create_app(limited)))
        second = stack.enter_context(TestClient(create_app(limited)))
        statuses = [create(c, ada).status_code for c in (first, second) * BURST]
        other = create(second, bo)
    assert statuses == [202] * BURST + [429] * BURST
    assert other.status_code == 202, other.text
    assert other.headers["ratelimit-remaining"] == str(BURST - 1)


def test_reads_are_not_limited(limited: Container) -> None:
    ada = bearer(limited, "ada@example.com")
    with TestClient(create_app(limited)) as client:
        for _ in range(BURST + 1):
            create(client, ada)
        quote = client.post("/v1/generations/quote", json=BODY, headers=ada)
        listed = client.get("/v1/generations", headers=ada)
    assert quote.status_code == 200 and listed.status_code == 200
    assert "ratelimit-limit" not in quote.headers


def test_without_redis_the_limit_fails_open(limited: Container) -> None:
    gone = replace(limited.settings, redis_url="redis://127.0.0.1:1/0")
    container = Container(gone)  # the same database, a Redis that is not there
    ada = bearer(limited, "ada@example.com")
    try:
        with TestClient(create_app(container)) as client:
            answers = [create(client, ada) for _ in range(BURST + 2)]
    finally:
        container.close()
    assert [a.status_code for a in answers] == [202] * (BURST + 2), answers[-1].text
    assert "ratelimit-limit" not in answers[0].headers


class Counting:
    """The limiter's Redis script, counted."""

    def __init__(self, script: Any) -> None:
        self.script, self.calls = script, 0

    async def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        return await self.script(**kwargs)


@pytest.mark.parametrize(("per_s", "burst", "most_calls"), [(1000.0, 100, 40), (0.001, 100, 101)])
def test_leases_spare_redis_round_trips_and_never_let_more_through_than_the_bucket(
    settings: Settings, per_s: float, burst: int, most_calls: int
) -> None:
    """A process spends small leases of the bucket locally: far fewer round trips while the
    bucket is full, exact near its end; at a slow refill no lease outgrows the refill."""
    clock = [0.0]

    async def run() -> tuple[list[Decision | None], int]:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            limiter = RateLimiter(client, f"test-{uuid4().hex}", per_s, burst, lambda: clock[0])
            counting = Counting(limiter._script)
            limiter._script = counting  # type: ignore[assignment]
            decisions = [await limiter.take("ada") for _ in range(burst + 1)]
        finally:
            await client.aclose()
        return decisions, counting.calls

    decisions, calls = asyncio.run(run())
    assert all(d is not None for d in decisions)
    allowed = [d for d in decisions if d is not None and d.allowed]
    # at a fast refill, a few tokens come back while the test runs: at least the burst passes
    assert len(allowed) >= burst if per_s > 1 else len(allowed) == burst
    if per_s < 1:
        assert decisions[-1] is not None and not decisions[-1].allowed
        remaining = [d.remaining for d in allowed]
        assert remaining == list(range(burst - 1, -1, -1))  # the headers count down by one
    assert calls <= most_calls


def test_concurrent_requests_pool_their_leases(settings: Settings) -> None:
    """32 requests at once each find no lease and ask Redis; what they lease is pooled, so the
    next ones are served locally instead of asking again."""

    async def run() -> int:
        client = aioredis.Redis.from_url(settings.redis_url or "")
        try:
            limiter = RateLimiter(client, f"test-{uuid4().hex}", 1_000_000, 1_000_000)
            counting = Counting(limiter._script)
            limiter._script = counting  # type: ignore[assignment]
            await asyncio.gather(*(limiter.take("ada") for _ in range(32)))
            before = counting.calls
            for _ in range(32 * 6):  # the pooled leases cover these
                await limiter.take("ada")
            return counting.calls - before
        finally:
            await client.aclose()

    assert asyncio.run(run()) == 0
