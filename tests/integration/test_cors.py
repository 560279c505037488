"""Browsers: preflights on every route, CORS headers, and the WebSocket's Origin check."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from litestar.exceptions import WebSocketDisconnect
from litestar.routes import HTTPRoute, WebSocketRoute
from litestar.testing import TestClient

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from interfaces.http.app import create_app

pytestmark = pytest.mark.integration

FRONT_END = "http://front.example:3000"
STRANGER = "http://evil.example"
REQUESTED = "authorization,content-type,idempotency-key,last-event-id"


@pytest.fixture
def browsers(settings: Settings) -> Iterator[Container]:
    container = build(replace(settings, cors_origins=(FRONT_END,)))
    yield container
    container.close()


@pytest.fixture
def client(browsers: Container) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(browsers)) as client:
        yield client


def concrete(path: str) -> str:
    """A path of the route with its parameters filled in."""
    values = {"uuid": "0190a5a0-0000-7000-8000-000000000000", "int": "1", "str": "x", "path": "x/y"}
    return re.sub(r"{\w+:(\w+)}", lambda m: values[m.group(1)], path)


def routes(client: TestClient[Any]) -> list[tuple[str, str]]:
    """Every (path, method) of the app's HTTP routes, Litestar's own OPTIONS aside."""
    found = [
        (concrete(route.path), method)
        for route in client.app.routes
        if isinstance(route, HTTPRoute)
        for method in sorted(route.methods - {"OPTIONS", "HEAD"})
    ]
    assert len(found) > 15
    return found


def test_a_preflight_on_every_route_allows_the_front_end(client: TestClient[Any]) -> None:
    for path, method in routes(client):
        answer = client.options(
            path,
            headers={
                "Origin": FRONT_END,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": REQUESTED,
            },
        )
        assert answer.status_code == 204, (path, method, answer.text)
        assert answer.headers["access-control-allow-origin"] == FRONT_END, path
        allowed = answer.headers["access-control-allow-headers"].lower()
        assert set(REQUESTED.split(",")) <= {h.strip() for h in allowed.split(",")}, path
        assert method in answer.headers["access-control-allow-methods"], path


def test_a_plain_options_on_every_route_answers_without_a_key(client: TestClient[Any]) -> None:
    for path, method in routes(client):
        answer = client.options(path)
        assert answer.status_code == 204, (path, answer.text)
        assert method in answer.headers["allow"], path


def test_other_origins_are_refused(client: TestClient[Any]) -> None:
    preflight = client.options(
        "/v1/generations",
        headers={"Origin": STRANGER, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    simple = client.get("/health", headers={"Origin": STRANGER})
    assert "access-control-allow-origin" not in simple.headers


def test_answers_to_the_front_end_expose_the_rate_limit_headers(
    client: TestClient[Any], browsers: Container
) -> None:
    key = browsers.users.create("ada@example.com").api_key
    answer = client.post(
        "/v1/generations",
        json={"model": "sim-instant", "prompt": "x"},
        headers={"Origin": FRONT_END, "Authorization": f"Bearer {key}"},
    )
    assert answer.status_code == 402  # no credits; still a limited route's answer
    assert answer.headers["access-control-allow-origin"] == FRONT_END
    exposed = {
        h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
    }
    assert {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after"} <= exposed
    assert answer.headers["ratelimit-limit"] == "20"


def test_the_websocket_checks_the_origin(client: TestClient[Any], browsers: Container) -> None:
    [socket] = [r.path for r in client.app.routes if isinstance(r, WebSocketRoute)]
    key = browsers.users.create("ada@example.com").api_key
    auth = {"Authorization": f"Bearer {key}"}
    own = str(client.base_url).rstrip("/")
    for origin in (FRONT_END, own, None):
        headers = auth if origin is None else {**auth, "Origin": origin}
        with client.websocket_connect(socket, headers=headers) as ws:
            ws.close()
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(socket, headers={**auth, "Origin": STRANGER}),
    ):
        pass
    assert refused.value.code == 4403
