"""The HTTP API against real PostgreSQL and Redis (in-process ASGI client)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from interfaces.bootstrap import Container
from interfaces.http.app import create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def client(container: Container) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(container)) as client:
        yield client


@pytest.fixture
def admin(container: Container) -> dict[str, str]:
    created = container.users.create("root@example.com", admin=True)
    return {"Authorization": f"Bearer {created.api_key}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def test_health_and_ready(client: TestClient[Any]) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert client.get("/schema/openapi.json").json()["paths"]["/v1/credits"]


def test_401_without_or_with_a_bad_key(client: TestClient[Any]) -> None:
    assert_problem(client.get("/v1/me"), 401)
    assert_problem(client.get("/v1/me", headers=bearer("pxv_nope")), 401)
    assert_problem(client.get("/v1/me", headers={"Authorization": "Basic abc"}), 401)


def test_admin_creates_user_who_sees_own_credits(
    client: TestClient[Any], container: Container, admin: dict[str, str]
) -> None:
    made = client.post(
        "/v1/admin/users", json={"email": "bo@example.com", "credits": "12.5"}, headers=admin
    )
    assert made.status_code == 201, made.text
    key = made.json()["api_key"]
    me = client.get("/v1/me", headers=bearer(key)).json()
    assert me == {"user_id": made.json()["user_id"], "email": "bo@example.com", "admin": False}
    container.projection("ledger").catch_up()
    credits = client.get("/v1/credits", headers=bearer(key)).json()
    assert credits == {"balance": "12.5000", "available": "12.5000", "held": "0.0000", "holds": []}
    ledger = client.get("/v1/credits/ledger", headers=bearer(key)).json()
    assert [e["kind"] for e in ledger["items"]] == ["grant"]
    assert ledger["items"][0]["amount"] == "12.5000" and ledger["next_cursor"] is None
    # non-admins cannot use admin routes
    assert_problem(
        client.post("/v1/admin/users", json={"email": "x@example.com"}, headers=bearer(key)), 403
    )


def test_grant_is_idempotent_and_paginates(
    client: TestClient[Any], container: Container, admin: dict[str, str]
) -> None:
    user = container.users.create("cy@example.com")
    body = {"user_id": str(user.user_id), "amount": "1.0001", "reason": "goodwill"}
    first = client.post(
        "/v1/admin/credits/grants", json=body, headers={**admin, "Idempotency-Key": "k1"}
    )
    again = client.post(
        "/v1/admin/credits/grants", json=body, headers={**admin, "Idempotency-Key": "k1"}
    )
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert first.json()["balance_after"] == "1.0001"
    other = dict(body, amount="2")
    assert_problem(
        client.post(
            "/v1/admin/credits/grants", json=other, headers={**admin, "Idempotency-Key": "k1"}
        ),
        409,
    )
    for _ in range(3):
        client.post("/v1/admin/credits/grants", json=body, headers=admin)
    container.projection("ledger").catch_up()
    page = client.get("/v1/credits/ledger?limit=3", headers=bearer(user.api_key)).json()
    assert len(page["items"]) == 3 and page["next_cursor"]
    rest = client.get(
        f"/v1/credits/ledger?limit=3&cursor={page['next_cursor']}", headers=bearer(user.api_key)
    ).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    ids = {e["id"] for e in page["items"]} | {e["id"] for e in rest["items"]}
    assert len(ids) == 4
    assert client.get("/v1/credits", headers=bearer(user.api_key)).json()["balance"] == "4.0004"


def test_other_users_data_is_invisible(
    client: TestClient[Any], container: Container, admin: dict[str, str]
) -> None:
    ann = container.users.create("ann@example.com", credits=5)
    ben = container.users.create("ben@example.com")
    container.projection("ledger").catch_up()
    assert client.get("/v1/credits", headers=bearer(ben.api_key)).json()["balance"] == "0.0000"
    assert client.get("/v1/credits/ledger", headers=bearer(ben.api_key)).json()["items"] == []
    unknown = {"user_id": "00000000-0000-0000-0000-000000000000", "amount": "1"}
    assert_problem(client.post("/v1/admin/credits/grants", json=unknown, headers=admin), 404)
    assert ann.user_id != ben.user_id


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"email": "a@b.c", "unexpected": 1}', 400),
        (b'{"email": "a\\u0000b@c.d"}', 400),
        (b'{"email": "n@example.com", "credits": "1e99999"}', 400),
        (b'{"email": "n@example.com", "credits": 99999999999999999999999999999}', 400),
        (b'{"email": "n@example.com", "credits": -5}', 400),
        (b'{"email": "n@example.com", "credits": "0.00001"}', 400),
        (b"[]", 400),
    ],
)
def test_bad_input_is_a_problem_never_a_500(
    client: TestClient[Any], admin: dict[str, str], body: bytes, status: int
) -> None:
    response = client.post(
        "/v1/admin/users", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    problem = assert_problem(response, status)
    if status == 400 and body.startswith(b'{"email'):
        assert problem["errors"], problem


def test_bad_grants_and_queries(
    client: TestClient[Any], container: Container, admin: dict[str, str]
) -> None:
    user = container.users.create("dee@example.com")
    uid = str(user.user_id)
    for amount in ("0", "0.0000", "-1", "1.23456", "1" * 30):
        assert client.post(
            "/v1/admin/credits/grants", json={"user_id": uid, "amount": amount}, headers=admin
        ).status_code in (400, 422)
    assert_problem(
        client.post(
            "/v1/admin/credits/grants",
            json={"user_id": uid, "amount": "1", "reason": "a\x00b"},
            headers=admin,
        ),
        400,
    )
    assert_problem(
        client.post(
            "/v1/admin/credits/grants", json={"user_id": "not-a-uuid", "amount": "1"}, headers=admin
        ),
        400,
    )
    key = bearer(user.api_key)
    assert_problem(client.get("/v1/credits/ledger?limit=100000000000000000000", headers=key), 400)
    assert_problem(client.get("/v1/credits/ledger?limit=0", headers=key), 400)
    assert_problem(client.get("/v1/credits/ledger?cursor=%00%01", headers=key), 400)
    assert_problem(client.get("/v1/nothing-here", headers=key), 404)
    big = b'{"email": "' + b"a" * 2_000_000 + b'@x.y"}'
    assert_problem(
        client.post(
            "/v1/admin/users", content=big, headers={**admin, "Content-Type": "application/json"}
        ),
        413,
    )
    assert_problem(
        client.post("/v1/admin/users", json={"email": "root@example.com"}, headers=admin), 409
    )
