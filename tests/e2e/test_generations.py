"""Generations end to end: HTTP API -> event store -> dispatcher -> Dramatiq worker -> the
simulator over real HTTP -> storage -> projection -> ledger."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import pyvips
from litestar.testing import TestClient

from domain.credits import to_units
from domain.generation import TERMINAL
from infrastructure.settings import Settings
from infrastructure.simulator.render import render
from interfaces.bootstrap import Container, build
from interfaces.http.app import create_app
from projections import generation_queries
from tests.support.platform import platform_processes, with_simulator
from tests.support.processes import child_env, dramatiq_worker, running, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def processes() -> dict[str, subprocess.Popen[bytes]]:
    """The platform's processes, by name, for tests that kill one."""
    return {}


@pytest.fixture
def platform(
    request: pytest.FixtureRequest,
    settings: Settings,
    simulator: str,
    tmp_path: Path,
    processes: dict[str, subprocess.Popen[bytes]],
) -> Iterator[Container]:
    settings = with_simulator(replace(settings, projection_batch=200), simulator)
    container = build(settings)
    for name in ("ledger", "generations"):
        container.projection(name).start()
    with platform_processes(settings, tmp_path, workers=getattr(request, "param", 1)) as started:
        processes.update(started)
        yield container
    container.close()


@pytest.fixture
def client(platform: Container) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(platform)) as client:
        yield client


def pixels(data: bytes) -> bytes:
    return bytes(pyvips.Image.new_from_buffer(data, "").write_to_memory())


def user(platform: Container, credits: str = "10") -> dict[str, str]:
    made = platform.users.create(f"user-{credits}@example.com", credits)
    return {"Authorization": f"Bearer {made.api_key}"}


def finished(
    client: TestClient[Any], headers: dict[str, str], generation_id: str, timeout: float = 60
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        response = client.get(f"/v1/generations/{generation_id}", headers=headers)
        if response.status_code == 200:
            seen.update(response.json())
        return seen.get("status") in TERMINAL

    assert wait_for(done, timeout=timeout, interval=0.1), seen
    return seen


def wait_running(client: TestClient[Any], headers: dict[str, str], generation_id: str) -> None:
    def running() -> bool:
        view = client.get(f"/v1/generations/{generation_id}", headers=headers).json()
        return bool(view.get("status") == "running")

    assert wait_for(running, timeout=30)


def wait_funded_projection(client: TestClient[Any], headers: dict[str, str]) -> None:
    assert wait_for(
        lambda: client.get("/v1/credits", headers=headers).json()["balance"] != "0.0000", timeout=20
    )


@pytest.mark.parametrize(
    ("model", "seed"), [("sim-instant", 11), ("flux-dev-fal", 12), ("imagen-3", 0)]
)
def test_happy_path_for_each_wire_style(
    client: TestClient[Any], platform: Container, model: str, seed: int
) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    body = {
        "model": model,
        "prompt": "a lighthouse at dusk",
        "params": {"width": 512, "height": 512, "seed": seed},
    }
    quote = client.post("/v1/generations/quote", json=body, headers=headers).json()
    accepted = client.post("/v1/generations", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    generation = finished(client, headers, accepted.json()["id"])
    assert generation["status"] == "completed", generation
    assert generation["charged_credits"] == quote["cost_credits"] == generation["cost_credits"]
    result = generation["result"]
    assert (result["width"], result["height"]) == (512, 512)
    asset = client.get(result["url"], headers=headers)
    assert asset.status_code == 200
    # the provider's pixels, re-encoded without its metadata
    assert pixels(asset.content) == pixels(render("a lighthouse at dusk", seed, 512, 512))

    def settled() -> bool:
        ledger = client.get("/v1/credits/ledger", headers=headers).json()["items"]
        return [e["kind"] for e in ledger][:2] == ["capture", "hold"]

    assert wait_for(settled, timeout=20)
    credits = client.get("/v1/credits", headers=headers).json()
    left = Decimal(10) - Decimal(quote["cost_credits"])
    assert (Decimal(credits["balance"]), credits["held"]) == (left, "0.0000")
    me = client.get("/v1/me", headers=headers).json()["user_id"]
    assert platform.billing.position(UUID(me)).balance == to_units(left)  # the event store agrees


def test_rate_limited_provider_is_retried_after_its_delay_and_billed_once(
    client: TestClient[Any], platform: Container, simulator: str
) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    httpx.post(f"{simulator}/_sim/faults/replicate", json={"rate_limited": 1, "retry_after_s": 1})
    before = httpx.get(f"{simulator}/_sim/stats").json().get("replicate", {})
    body = {"model": "sim-instant", "prompt": "slow down", "params": {"seed": 1}}
    accepted = client.post("/v1/generations", json=body, headers=headers).json()
    generation = finished(client, headers, accepted["id"])
    assert generation["status"] == "completed", generation
    after = httpx.get(f"{simulator}/_sim/stats").json()["replicate"]
    assert after["rejected_429"] - before.get("rejected_429", 0) == 1
    assert after["submissions"] - before.get("submissions", 0) == 1
    # measured at the simulator: the resubmission came no sooner than Retry-After said
    # (sim-instant's own backoff is 0.1 s, so a client ignoring the header resubmits sooner)
    rejected_at = after["rejected_429_at"][-1]  # this test's only 429 (counted above)
    [resubmitted_at] = [t for t in after["submitted_at"] if t > rejected_at]
    assert resubmitted_at - rejected_at >= 1.0

    def one_capture() -> bool:
        kinds = [
            e["kind"] for e in client.get("/v1/credits/ledger", headers=headers).json()["items"]
        ]
        return kinds.count("capture") == 1 and kinds.count("hold") == 1

    assert wait_for(one_capture, timeout=20)


def test_insufficient_credits_answer_402_at_once(
    client: TestClient[Any], platform: Container
) -> None:
    headers = user(platform, credits="0.05")
    wait_funded_projection(client, headers)
    body = {"model": "flux-schnell", "prompt": "too dear"}
    refused = client.post("/v1/generations", json=body, headers=headers)
    assert refused.status_code == 402, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")


def test_one_idempotency_key_makes_one_generation_even_concurrently(
    client: TestClient[Any], platform: Container
) -> None:
    headers = {**user(platform), "Idempotency-Key": "same-key"}
    wait_funded_projection(client, headers)
    body = {"model": "sim-instant", "prompt": "once", "params": {"seed": 3}}
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(
            pool.map(lambda _: client.post("/v1/generations", json=body, headers=headers), range(4))
        )
    assert [a.status_code for a in answers] == [202] * 4, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    other = client.post("/v1/generations", json={**body, "prompt": "twice"}, headers=headers)
    assert other.status_code == 409, other.text
    generation = finished(client, headers, answers[0].json()["id"])
    assert generation["status"] == "completed"
    listed = client.get("/v1/generations", headers=headers).json()["items"]
    assert [g["id"] for g in listed] == [answers[0].json()["id"]]


def test_two_generations_racing_for_the_last_credits(
    client: TestClient[Any], platform: Container
) -> None:
    headers = user(platform, credits="0.1500")  # one sim-instant costs 0.1
    wait_funded_projection(client, headers)
    body = {"model": "sim-instant", "prompt": "race", "params": {"seed": 9}}
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(
            pool.map(lambda _: client.post("/v1/generations", json=body, headers=headers), range(2))
        )
    assert [a.status_code for a in answers] == [202, 202]  # both pass the fast pre-check
    outcomes = sorted(finished(client, headers, a.json()["id"])["status"] for a in answers)
    assert outcomes == ["completed", "failed"]
    failed = [finished(client, headers, a.json()["id"]) for a in answers]
    codes = {g["error"]["code"] for g in failed if g["error"]}
    assert codes == {"insufficient_credits"}
    assert wait_for(
        lambda: client.get("/v1/credits", headers=headers).json()["balance"] == "0.0500", timeout=20
    )
    assert client.get("/v1/credits", headers=headers).json()["available"] == "0.0500"


def test_cancel_while_running_tells_the_provider_and_releases_the_hold(
    client: TestClient[Any], platform: Container, simulator: str
) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    httpx.post(f"{simulator}/_sim/faults/replicate", json={"hang": True})
    cancels = httpx.get(f"{simulator}/_sim/stats").json().get("replicate", {}).get("cancels", 0)
    body = {"model": "sim-instant", "prompt": "never mind", "params": {"seed": 5}}
    generation_id = client.post("/v1/generations", json=body, headers=headers).json()["id"]
    wait_running(client, headers, generation_id)
    cancelled = client.post(f"/v1/generations/{generation_id}/cancel", headers=headers)
    assert cancelled.status_code == 202, cancelled.text
    assert finished(client, headers, generation_id)["status"] == "cancelled"
    assert httpx.get(f"{simulator}/_sim/stats").json()["replicate"]["cancels"] == cancels + 1

    def released() -> bool:
        kinds = [
            e["kind"] for e in client.get("/v1/credits/ledger", headers=headers).json()["items"]
        ]
        return kinds[:2] == ["release", "hold"]

    assert wait_for(released, timeout=20)
    assert client.get("/v1/credits", headers=headers).json()["available"] == "10.0000"
    again = client.post(f"/v1/generations/{generation_id}/cancel", headers=headers)
    assert again.status_code == 409


def test_a_lookup_by_id_touches_one_partition(client: TestClient[Any], platform: Container) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    body = {"model": "sim-instant", "prompt": "plan", "params": {"seed": 2}}
    generation_id = UUID(client.post("/v1/generations", json=body, headers=headers).json()["id"])
    me = UUID(client.get("/v1/me", headers=headers).json()["user_id"])
    with platform.pool.connection() as conn:
        for month in (-14, -3, 1, 5):  # other months' partitions exist too
            conn.execute(
                "SELECT public.pixevo_ensure_partition('proj_generations.generations'"
                "::regclass, now() + make_interval(months => %s))",
                [month],
            )
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + generation_queries.by_id_statement(),
                generation_queries.by_id_params(me, generation_id),
            )
        )
    scanned = {line.split(" on ")[1].split()[0] for line in plan.splitlines() if " on " in line}
    assert len({name for name in scanned if name.startswith("generations_")}) == 1, plan


@pytest.mark.parametrize("platform", [2], indirect=True)  # two worker processes
def test_outage_opens_the_breaker_for_every_worker_and_falls_back_or_defers(
    client: TestClient[Any], platform: Container, simulator: str
) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    httpx.post(f"{simulator}/_sim/faults/replicate", json={"outage": True})
    body = {"model": "flux-schnell", "prompt": "storm", "params": {"seed": 4}}
    first = finished(
        client, headers, client.post("/v1/generations", json=body, headers=headers).json()["id"]
    )
    assert first["status"] == "completed", first
    assert (first["fallback_from"], first["model"]) == ("flux-schnell", "flux-dev-fal")
    assert first["charged_credits"] == first["cost_credits"] == "0.3000"  # never above the quote
    assert platform.breakers.is_open("replicate")  # the state lives in Redis, for every process

    attempts = httpx.get(f"{simulator}/_sim/stats").json()["replicate"]["errors"]
    later = [
        client.post(
            "/v1/generations", json={**body, "params": {"seed": s}}, headers=headers
        ).json()["id"]
        for s in (5, 6, 7)
    ]
    assert all(finished(client, headers, g)["fallback_from"] == "flux-schnell" for g in later)
    # whichever worker process took them, none called the provider while its circuit was open
    assert httpx.get(f"{simulator}/_sim/stats").json()["replicate"]["errors"] == attempts

    waiting = client.post(
        "/v1/generations", json={**body, "allow_fallback": False}, headers=headers
    ).json()["id"]

    def told_it_waits() -> bool:
        shown = client.get(f"/v1/generations/{waiting}", headers=headers).json()
        return shown["status"] == "queued" and "longer than usual" in (shown["notice"] or "")

    assert wait_for(told_it_waits, timeout=30)  # deferred, not failed, and the user is told
    httpx.post(f"{simulator}/_sim/faults/replicate", json={})  # the outage ends
    deferred = finished(client, headers, waiting, timeout=90)
    assert deferred["status"] == "completed", deferred
    assert (deferred["fallback_from"], deferred["model"]) == (None, "flux-schnell")


def test_worker_killed_while_waiting_on_the_provider_resumes_without_resubmitting(
    client: TestClient[Any],
    platform: Container,
    simulator: str,
    settings: Settings,
    processes: dict[str, subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    httpx.post(f"{simulator}/_sim/faults/replicate", json={"latency_scale": 0.5})  # ~3 s jobs
    before = httpx.get(f"{simulator}/_sim/stats").json().get("replicate", {})
    body = {"model": "flux-dev", "prompt": "survive", "params": {"seed": 8}}
    generation_id = client.post("/v1/generations", json=body, headers=headers).json()["id"]
    wait_running(client, headers, generation_id)
    worker = processes["worker"]
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its children, mid-wait
    worker.wait()
    killed_at = time.monotonic()
    env = child_env(with_simulator(settings, simulator))
    with running(dramatiq_worker("interfaces.worker"), env, tmp_path / "worker2.log"):
        generation = finished(client, headers, generation_id, timeout=90)
        recovered_in = time.monotonic() - killed_at
    assert generation["status"] == "completed", generation
    assert recovered_in < 30, f"took {recovered_in:.1f} s after the kill"
    after = httpx.get(f"{simulator}/_sim/stats").json()["replicate"]
    assert after["submissions"] - before.get("submissions", 0) == 1  # polled again, not resent
    job_id = platform.generations.generation(None, UUID(generation_id)).job_id
    job = httpx.get(f"{simulator}/_sim/jobs/{job_id}").json()  # times on this host's clock
    assert any(t > killed_at for t in job["polled_at"])  # the new worker waited on that job

    def one_capture() -> bool:
        kinds = [
            e["kind"] for e in client.get("/v1/credits/ledger", headers=headers).json()["items"]
        ]
        return kinds.count("capture") == 1

    assert wait_for(one_capture, timeout=20)
    print(f"recovered {recovered_in:.1f} s after SIGKILL")  # noqa: T201 - shown with -s


def test_an_identical_seeded_request_is_served_from_cache_at_the_cache_price(
    client: TestClient[Any], platform: Container, simulator: str
) -> None:
    first_user, second_user = user(platform, "10"), user(platform, "5")
    wait_funded_projection(client, first_user)
    wait_funded_projection(client, second_user)
    body = {
        "model": "sim-instant",
        "prompt": "the same",
        "params": {"width": 256, "height": 256, "seed": 77},
    }
    before = httpx.get(f"{simulator}/_sim/stats").json().get("replicate", {}).get("submissions", 0)
    original = finished(
        client,
        first_user,
        client.post("/v1/generations", json=body, headers=first_user).json()["id"],
    )
    assert original["served_from_cache"] is False
    cached = finished(
        client,
        second_user,
        client.post("/v1/generations", json=body, headers=second_user).json()["id"],
    )
    assert cached["status"] == "completed", cached
    assert cached["served_from_cache"] is True
    assert cached["charged_credits"] == "0.0000"
    assert httpx.get(f"{simulator}/_sim/stats").json()["replicate"]["submissions"] == before + 1
    assert (
        client.get(cached["result"]["url"], headers=second_user).content
        == client.get(original["result"]["url"], headers=first_user).content
    )
    unseeded = {**body, "params": {"width": 256, "height": 256}}
    fresh = finished(
        client,
        second_user,
        client.post("/v1/generations", json=unseeded, headers=second_user).json()["id"],
    )
    assert fresh["served_from_cache"] is False  # no explicit seed: never from cache


def test_list_filters_and_pages(client: TestClient[Any], platform: Container) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    ids = [
        client.post(
            "/v1/generations", json={"model": "sim-instant", "prompt": f"n{n}"}, headers=headers
        ).json()["id"]
        for n in range(3)
    ]
    for generation_id in ids:
        finished(client, headers, generation_id)
    page = client.get("/v1/generations?limit=2", headers=headers).json()
    assert [g["id"] for g in page["items"]] == ids[::-1][:2]  # newest first
    rest = client.get(
        f"/v1/generations?limit=2&cursor={page['next_cursor']}", headers=headers
    ).json()
    assert [g["id"] for g in rest["items"]] == [ids[0]]
    assert rest["next_cursor"] is None
    done = client.get("/v1/generations?status=completed&model=sim-instant", headers=headers)
    assert len(done.json()["items"]) == 3
    assert client.get("/v1/generations?status=failed", headers=headers).json()["items"] == []
    assert client.get("/v1/generations?since=yesterday", headers=headers).status_code == 400
    other = user(platform, "1")
    assert client.get(f"/v1/generations/{ids[0]}", headers=other).status_code == 404
    assert client.get("/v1/generations", headers=other).json()["items"] == []
    bad = client.post(
        "/v1/generations",
        json={"model": "recraft-v3", "prompt": "x", "params": {"aspect_ratio": "21:9"}},
        headers=headers,
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "params.aspect_ratio"
    unknown = client.post("/v1/generations", json={"model": "nope", "prompt": "x"}, headers=headers)
    assert unknown.status_code == 422
    assert client.get("/v1/models/nope", headers=headers).status_code == 404
    listed = client.get("/v1/models", headers=headers).json()["items"]
    assert [m["key"] for m in listed] == [m.key for m in platform.catalogue]
