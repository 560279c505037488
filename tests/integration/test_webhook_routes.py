"""The webhook routes in one process (real PostgreSQL, no sender): what is refused and who
sees what. Deliveries themselves are tested end to end (tests/e2e/test_webhooks.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from interfaces.bootstrap import Container
from interfaces.http.app import create_app
from tests.integration.test_api import assert_problem, bearer


@pytest.fixture
def client(container: Container) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(container)) as client:
        yield client


def user(container: Container, email: str) -> dict[str, str]:
    return bearer(container.users.create(email).api_key)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.7/hook", "private"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("gopher://93.184.215.14/", "http or https"),
        ("https://a:b@93.184.215.14/", "user name or password"),
        ("https://93.184.215.14/\u0000", "NUL"),
    ],
)
def test_a_url_that_is_not_a_public_endpoint_is_refused_with_422(
    client: TestClient[Any], container: Container, url: str, says: str
) -> None:
    refused = client.post(
        "/v1/webhooks",
        json={"url": url, "events": ["generation.completed"]},
        headers=user(container, "ada@example.com"),
    )
    body = assert_problem(refused, 422)
    assert says in refused.text, body


def test_endpoints_are_their_owners_alone(client: TestClient[Any], container: Container) -> None:
    ada, bob = user(container, "ada@example.com"), user(container, "bob@example.com")
    made = client.post(
        "/v1/webhooks",
        json={"url": "https://93.184.215.14/in", "events": ["install.created"]},
        headers=ada,
    )
    assert made.status_code == 201, made.text
    endpoint = made.json()
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["events"] == ["install.created"]
    path = f"/v1/webhooks/{endpoint['id']}"
    assert client.get(path, headers=ada).json()["secret"] == endpoint["secret"]
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/deliveries")):
        assert_problem(client.request(method, path + suffix, headers=bob), 404)
    assert_problem(
        client.post(path + "/redeliver", json={"since": "2026-01-01T00:00:00Z"}, headers=bob), 404
    )
    container.projection("webhook_endpoints").catch_up()  # no runner process here
    listed = client.get("/v1/webhooks", headers=ada).json()
    assert [e["id"] for e in listed["items"]] == [endpoint["id"]]
    assert "secret" not in listed["items"][0] or listed["items"][0]["secret"] is None
    assert client.get("/v1/webhooks", headers=bob).json()["items"] == []
    assert client.get(path + "/deliveries", headers=ada).json()["items"] == []
    assert client.delete(path, headers=ada).status_code == 204
    assert_problem(client.get(path, headers=ada), 404)
    container.projection("webhook_endpoints").catch_up()
    assert client.get("/v1/webhooks", headers=ada).json()["items"] == []


def test_bad_bodies_are_422_naming_the_field(client: TestClient[Any], container: Container) -> None:
    ada = user(container, "ada@example.com")
    for body in (
        {"url": "https://93.184.215.14/", "events": ["generation.exploded"]},
        {"url": "https://93.184.215.14/", "events": []},
        {"url": "https://93.184.215.14/", "events": ["install.created"], "extra": 1},
        {"events": ["install.created"]},
    ):
        answer = client.post("/v1/webhooks", json=body, headers=ada)
        assert answer.status_code in (400, 422), answer.text
    made = client.post(
        "/v1/webhooks",
        json={"url": "https://93.184.215.14/", "events": ["install.created"]},
        headers=ada,
    ).json()
    naive = client.post(
        f"/v1/webhooks/{made['id']}/redeliver",
        json={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        headers=ada,
    )
    assert_problem(naive, 422)
