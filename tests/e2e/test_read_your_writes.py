"""Read your own writes: what a create answered is readable at once, whatever the projection
processes' lag; and an idempotent replay answers the first result even when its hold has since
taken the credits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from litestar.testing import TestClient

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from interfaces.http.app import create_app
from tests.support.platform import platform_processes, with_simulator
from tests.support.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BODY = {"model": "sim-instant", "prompt": "a lighthouse", "params": {"width": 64, "height": 64}}


@pytest.fixture
def platform(settings: Settings, simulator: str, tmp_path: Path) -> Iterator[Container]:
    # many creates in a row: a limit this test is not about
    settings = replace(
        with_simulator(settings, simulator), rate_limit_per_s=1000, rate_limit_burst=1000
    )
    container = build(settings)
    with platform_processes(settings, tmp_path):
        yield container
    container.close()


@pytest.fixture
def client(platform: Container) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(platform)) as client:
        yield client


def user(client: TestClient[Any], platform: Container, credits: str) -> dict[str, str]:
    key = platform.users.create(f"{uuid4().hex[:8]}@example.com", credits).api_key
    headers = {"Authorization": f"Bearer {key}"}
    assert wait_for(
        lambda: client.get("/v1/credits", headers=headers).json()["available"] != "0.0000"
    )
    return headers


def test_a_get_right_after_each_create_answers_the_generation(
    client: TestClient[Any], platform: Container
) -> None:
    headers = user(client, platform, "100")
    for n in range(50):
        made = client.post("/v1/generations", json={**BODY, "prompt": f"#{n}"}, headers=headers)
        assert made.status_code == 202, made.text
        got = client.get(f"/v1/generations/{made.json()['id']}", headers=headers)
        assert got.status_code == 200, (n, got.text)
        assert got.json()["id"] == made.json()["id"] and got.json()["prompt"] == f"#{n}"


def test_unknown_and_foreign_generations_are_still_not_found(
    client: TestClient[Any], platform: Container
) -> None:
    ada, bo = user(client, platform, "10"), user(client, platform, "10")
    made = client.post("/v1/generations", json=BODY, headers=ada).json()
    assert client.get(f"/v1/generations/{made['id']}", headers=bo).status_code == 404
    assert client.get(f"/v1/generations/{uuid4()}", headers=ada).status_code == 404


def test_a_replay_answers_the_first_generation_after_its_hold_took_the_credits(
    client: TestClient[Any], platform: Container
) -> None:
    headers = user(client, platform, "0.1")  # exactly one sim-instant image
    keyed = {**headers, "Idempotency-Key": "once"}
    first = client.post("/v1/generations", json=BODY, headers=keyed)
    assert first.status_code == 202, first.text
    assert wait_for(  # the hold (then the capture) took them, and the read model says so
        lambda: client.get("/v1/credits", headers=headers).json()["available"] == "0.0000"
    )
    again = client.post("/v1/generations", json=BODY, headers=keyed)
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    # the pre-check still refuses new work, and the key still refuses another body
    assert client.post("/v1/generations", json=BODY, headers=headers).status_code == 402
    other = client.post("/v1/generations", json={**BODY, "prompt": "other"}, headers=keyed)
    assert other.status_code == 409, other.text


def test_a_new_users_credits_and_a_grant_are_readable_at_once(
    client: TestClient[Any], platform: Container
) -> None:
    user(client, platform, "1")  # the projection process is up and following (2 s is the wait)
    admin = platform.users.create("root@example.com", admin=True).api_key
    as_admin = {"Authorization": f"Bearer {admin}"}
    for n in range(10):
        made = client.post(
            "/v1/admin/users", json={"email": f"u{n}@example.com", "credits": "5"}, headers=as_admin
        )
        assert made.status_code == 201, made.text
        headers = {"Authorization": f"Bearer {made.json()['api_key']}"}
        assert client.get("/v1/credits", headers=headers).json()["balance"] == "5.0000", n
        grant = client.post(
            "/v1/admin/credits/grants",
            json={"user_id": made.json()["user_id"], "amount": "2", "reason": "welcome"},
            headers=as_admin,
        )
        assert grant.status_code == 201, grant.text
        ledger = client.get("/v1/credits/ledger", headers=headers).json()["items"]
        assert grant.json()["id"] in [e["id"] for e in ledger], n


def test_a_new_users_first_create_is_not_refused_while_the_ledger_projection_lags(
    client: TestClient[Any], platform: Container
) -> None:
    user(client, platform, "1")  # the projection process is up and following
    admin = platform.users.create("ops@example.com", admin=True).api_key
    as_admin = {"Authorization": f"Bearer {admin}"}
    for n in range(10):
        made = client.post(
            "/v1/admin/users", json={"email": f"n{n}@example.com", "credits": "5"}, headers=as_admin
        )
        headers = {"Authorization": f"Bearer {made.json()['api_key']}"}
        # at once: the 402 pre-check reads the projection, which may not have the credits yet
        created = client.post("/v1/generations", json=BODY, headers=headers)
        assert created.status_code == 202, (n, created.text)
