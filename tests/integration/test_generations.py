"""Generations end to end: HTTP API -> event store -> dispatcher -> Dramatiq worker -> the
simulator over real HTTP -> storage -> projection -> ledger."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from litestar.testing import TestClient

from domain.credits import to_units
from infrastructure.settings import Settings
from infrastructure.simulator.render import render
from interfaces.bootstrap import Container, build
from interfaces.http.app import create_app
from tests.support.platform import platform_processes, with_simulator
from tests.support.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def platform(settings: Settings, simulator: str, tmp_path: Path) -> Iterator[Container]:
    settings = with_simulator(replace(settings, projection_batch=200), simulator)
    container = build(settings)
    for name in ("ledger", "generations"):
        container.projection(name).start()
    with platform_processes(settings, tmp_path):
        yield container
    container.close()


@pytest.fixture
def client(platform: Container) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(platform)) as client:
        yield client


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
        return seen.get("status") in ("completed", "failed", "cancelled", "blocked")

    assert wait_for(done, timeout=timeout, interval=0.1), seen
    return seen


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
    assert asset.content == render("a lighthouse at dusk", seed, 512, 512)

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
