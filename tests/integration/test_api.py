"""The HTTP API against real PostgreSQL and Redis (in-process ASGI client)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from litestar.routes import WebSocketRoute
from litestar.testing import TestClient

from application.assets import preview_key
from domain.credits import Cause
from domain.generation import Generation
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


#: The HTTP contract, as the project keeps it.
CONTRACT = Path(__file__).parents[2] / "docs" / "API.md"
#: The contract's sections the app implements today; the others (workflows, marketplace,
#: webhooks, batches, ...) are the contract of open issues. Add a section here when it is built.
IMPLEMENTED = (
    "Users and keys",
    "Health",
    "Credits",
    "Models",
    "Generations",
    "Image inputs (uploads and references)",
    "Workflows",
    "Marketplace",
    "Operations",
    "Webhooks",
)
#: Routes the OpenAPI document cannot describe (it has no WebSocket operations).
WEBSOCKETS = {("GET", "/v1/ws")}


def contract_routes(sections: tuple[str, ...]) -> dict[str, set[tuple[str, str]]]:
    """The ``METHOD /path`` routes each section of the contract names, path parameters as
    ``{}`` (the contract says ``{id}`` where the app says ``{generation_id}``)."""
    routes: dict[str, set[tuple[str, str]]] = {}
    section = None
    for line in CONTRACT.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif section in sections:
            for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)", line):
                routes.setdefault(section, set()).add((method, re.sub(r"{[^}]*}", "{}", path)))
    return routes


def test_openapi_describes_every_route_of_the_implemented_contract(
    client: TestClient[Any],
) -> None:
    routes = contract_routes(IMPLEMENTED)
    assert set(routes) == set(IMPLEMENTED)  # every section parsed, each naming some route
    schema = client.get("/schema/openapi.json").json()
    described = {
        (method.upper(), re.sub(r"{[^}]*}", "{}", path))
        for path, operations in schema["paths"].items()
        for method in operations
    }
    expected = set().union(*routes.values())
    assert expected - WEBSOCKETS - described == set()
    sockets = {
        ("GET", re.sub(r"{[^}]*}", "{}", r.path))
        for r in client.app.routes
        if isinstance(r, WebSocketRoute)
    }
    assert expected & WEBSOCKETS <= sockets


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
    assert credits == {
        "balance": "12.5000",
        "available": "12.5000",
        "held": "0.0000",
        "owed": "0.0000",
        "holds": [],
    }
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


def completed_generation(
    client: TestClient[Any], container: Container, key: str, prompt: str
) -> Generation:
    """A generation asked for through the API and driven to completion in-process (no worker):
    funded by a real hold, its result, a derivative and a preview stored as blobs, projected."""
    asked = client.post(
        "/v1/generations",
        json={"model": "sim-instant", "prompt": prompt, "params": {"seed": 3}},
        headers=bearer(key),
    )
    assert asked.status_code == 202, asked.text
    apps = container.generations
    generation = apps.load(UUID(asked.json()["id"]), Generation)
    hold = container.billing.place_hold(
        generation.user_id, generation.quote, Cause("generation", str(generation.id))
    )
    generation.fund(hold)
    generation.queue()
    generation.submitted("job-1", 1)
    original, thumbnail = f"generations/{generation.id}/original.png", f"{generation.id}/t.webp"
    container.blobs.put(original, b"original-bytes", "image/png")
    container.blobs.put(thumbnail, b"thumbnail-bytes", "image/webp")
    container.blobs.put(preview_key(generation.id, 1), b"preview-bytes", "image/jpeg")
    generation.produced(original, 64, 64, "image/png", 14, 5)
    thumb = {"kind": "thumbnail", "storage_key": thumbnail, "width": 32, "height": 32}
    generation.process(
        [{**thumb, "format": "webp", "bytes": 15, "media_type": "image/webp"}],
        "L00000fQfQfQfQfQfQfQfQfQfQfQ",
        0.5,
        0.01,
        "test",
    )
    generation.complete(generation.quote)
    generation.derived([])  # none follow: the original is the provider's file, as it was
    apps.save(generation)
    container.billing.capture(generation.user_id, hold, generation.quote)
    return generation


def test_other_users_data_is_invisible(
    client: TestClient[Any], container: Container, admin: dict[str, str]
) -> None:
    ann = container.users.create("ann@example.com", credits=5)
    ben = container.users.create("ben@example.com")
    container.projection("ledger").catch_up()  # ann's grant: she can afford to ask
    done = completed_generation(client, container, ann.api_key, "ann's secret fox")
    asked = client.post(
        "/v1/generations",
        json={"model": "sim-instant", "prompt": "ann's open request", "params": {"seed": 4}},
        headers=bearer(ann.api_key),
    )
    assert asked.status_code == 202, asked.text
    open_id = asked.json()["id"]
    container.billing.place_hold(ann.user_id, 1, Cause("generation", open_id))
    container.projection("ledger").catch_up()
    container.projection("generations").catch_up()
    base = f"/v1/generations/{done.id}"
    reads = [
        f"{base}",
        f"{base}/assets/original",
        f"{base}/assets/thumbnail",
        f"{base}/previews/1",
        f"/v1/generations/{open_id}",
    ]
    # ann reads all of it ...
    as_ann = bearer(ann.api_key)
    for path in reads:
        assert client.get(path, headers=as_ann).status_code == 200, path
    assert client.get(f"{base}/assets/original", headers=as_ann).content == b"original-bytes"
    final = client.get(f"{base}/events", headers=as_ann)  # a finished one: its final event
    assert (final.status_code, "event: completed" in final.text) == (200, True), final.text
    listed = client.get("/v1/generations", headers=as_ann).json()["items"]
    assert {g["id"] for g in listed} == {str(done.id), open_id}
    ann_credits = client.get("/v1/credits", headers=as_ann).json()
    assert ann_credits["held"] != "0.0000" and ann_credits["balance"] != "5.0000"
    ann_ledger = client.get("/v1/credits/ledger", headers=as_ann).json()["items"]
    assert {e["kind"] for e in ann_ledger} == {"grant", "hold", "capture"}
    # ... and ben, with his own key, none of it: 404 as if it did not exist
    as_ben = bearer(ben.api_key)
    answers = [client.get(path, headers=as_ben) for path in reads]
    answers.append(client.post(f"/v1/generations/{open_id}/cancel", headers=as_ben))
    answers.append(client.get(f"{base}/events", headers=as_ben))
    answers.append(client.get(f"/v1/generations/{open_id}/events", headers=as_ben))
    for answer in answers:
        assert_problem(answer, 404)
    ben_credits = client.get("/v1/credits", headers=as_ben)
    assert ben_credits.json() == {
        "balance": "0.0000",
        "available": "0.0000",
        "held": "0.0000",
        "owed": "0.0000",
        "holds": [],
    }
    ben_ledger = client.get("/v1/credits/ledger", headers=as_ben)
    assert ben_ledger.json() == {"items": [], "next_cursor": None}
    ben_list = client.get("/v1/generations", headers=as_ben)
    assert ben_list.json() == {"items": [], "next_cursor": None}
    for answer in [*answers, ben_credits, ben_ledger, ben_list]:
        for secret in (
            "ann@example.com",
            str(ann.user_id),
            "secret fox",
            "open request",
            "original-bytes",
            "thumbnail-bytes",
            "preview-bytes",
        ):
            assert secret not in answer.text, (answer.request.url, answer.text)
    # ben's cancel changed nothing
    assert not container.generations.load(UUID(open_id), Generation).cancel_requested
    unknown = {"user_id": "00000000-0000-0000-0000-000000000000", "amount": "1"}
    assert_problem(client.post("/v1/admin/credits/grants", json=unknown, headers=admin), 404)


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        (b"{not json", 400, None),
        (b'{"email": "a@b.c", "unexpected": 1}', 400, "unexpected"),
        (b'{"email": "a\\u0000b@c.d"}', 400, "email"),
        (b'{"email": "n@example.com", "credits": "1e99999"}', 400, "credits"),
        (b'{"email": "n@example.com", "credits": 99999999999999999999999999999}', 400, "credits"),
        (b'{"email": "n@example.com", "credits": -5}', 400, "credits"),
        (b'{"email": "n@example.com", "credits": "0.00001"}', 400, "credits"),
        (b"[]", 400, None),
        (b"[" * 5000 + b"]" * 5000, 400, None),  # nested deeper than the decoder goes
        (b'{"email": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None),
    ],
)
def test_bad_input_is_a_problem_never_a_500(
    client: TestClient[Any], admin: dict[str, str], body: bytes, status: int, named: str | None
) -> None:
    response = client.post(
        "/v1/admin/users", content=body, headers={**admin, "Content-Type": "application/json"}
    )
    problem = assert_problem(response, status)
    if named is not None:  # one error, naming what was wrong (field, or in its message)
        [error] = problem["errors"]
        assert named in f"{error['field']} {error['message']}", problem


def test_bad_grants_and_queries(
    client: TestClient[Any], container: Container, admin: dict[str, str]
) -> None:
    user = container.users.create("dee@example.com")
    uid = str(user.user_id)
    # malformed amounts are 400 naming the field; a well-formed zero is 422
    for amount, status in (("0", 422), ("0.0000", 422), ("-1", 400), ("1.23456", 400)):
        problem = assert_problem(
            client.post(
                "/v1/admin/credits/grants", json={"user_id": uid, "amount": amount}, headers=admin
            ),
            status,
        )
        if status == 400:
            assert [e["field"] for e in problem["errors"]] == ["amount"], amount
    assert_problem(
        client.post(
            "/v1/admin/credits/grants", json={"user_id": uid, "amount": "1" * 30}, headers=admin
        ),
        400,
    )
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
    for query in ("q=a%00b", "sort=bogus", "cursor=%00%01", "q=", "limit=0"):
        assert_problem(client.get(f"/v1/listings?{query}", headers=key), 400)
    assert_problem(client.get("/v1/me/earnings?cursor=zzz", headers=key), 400)
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
