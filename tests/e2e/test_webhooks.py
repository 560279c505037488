"""Webhooks end to end, every process real (API, worker, dispatcher with its sender,
projections, simulator) and receivers in this test: signed deliveries verified with the
reference library, retries with one webhook-id, order per endpoint, redelivery from the log,
redirects not followed, and an endpoint disabled after failing, then enabled again.

The platform runs with private addresses allowed (the receivers listen on 127.0.0.1), a retry
schedule of fractions of a second and a disabling period of a few seconds."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from domain.generation import TERMINAL
from infrastructure.settings import Settings
from interfaces.bootstrap import build
from interfaces.cli.launch import with_simulator
from tests.e2e.test_marketplace import published
from tests.e2e.test_workflows import finished
from tests.support.processes import free_port, launcher, wait_for
from tests.support.services import scratch_database, scratch_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RETRY = (0.0, *([0.3] * 30))
DISABLE_AFTER_S = 3.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


@dataclass
class Receiver:
    """An HTTP endpoint answering a plan of statuses (then ``default``), recording requests."""

    plan: list[int] = field(default_factory=list)
    default: int = 200
    location: str | None = None
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def answer(self) -> int:
        with self.lock:
            return self.plan.pop(0) if self.plan else self.default

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def receiving(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                receiver.received.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                )
            status = receiver.answer()
            self.send_response(status)
            if receiver.location:
                self.send_header("Location", receiver.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver.server = server
    return server


@dataclass
class Platform:
    http: httpx.Client
    admin: dict[str, str]
    receivers: list[Receiver] = field(default_factory=list)
    users: int = 0

    def user(self) -> dict[str, str]:
        self.users += 1
        made = self.http.post(
            "/v1/admin/users",
            json={"email": f"hooks{self.users}@example.com", "credits": "50"},
            headers=self.admin,
        )
        assert made.status_code == 201, made.text
        headers = {"Authorization": f"Bearer {made.json()['api_key']}"}
        funded = lambda: self.http.get("/v1/credits", headers=headers).json()["balance"] != "0.0000"  # noqa: E731
        assert wait_for(funded, timeout=20)
        return headers

    def receiver(self, plan: list[int] | None = None, **kwargs: Any) -> Receiver:
        receiver = Receiver(plan=plan or [], **kwargs)
        receiving(receiver)
        self.receivers.append(receiver)
        return receiver

    def register(self, headers: dict[str, str], url: str, events: list[str]) -> dict[str, Any]:
        made = self.http.post("/v1/webhooks", json={"url": url, "events": events}, headers=headers)
        assert made.status_code == 201, made.text
        return dict(made.json())

    def generate(self, headers: dict[str, str], seed: int) -> dict[str, Any]:
        body = {"model": "sim-instant", "prompt": f"a lighthouse {seed}", "params": {"seed": seed}}
        accepted = self.http.post("/v1/generations", json=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        seen: dict[str, Any] = {}

        def done() -> bool:
            got = self.http.get(f"/v1/generations/{accepted.json()['id']}", headers=headers)
            if got.status_code == 200:
                seen.update(got.json())
            return seen.get("status") in TERMINAL

        assert wait_for(done, timeout=60, interval=0.05), seen
        assert seen["status"] == "completed", seen
        return seen

    def deliveries(self, headers: dict[str, str], endpoint_id: str) -> list[dict[str, Any]]:
        got = self.http.get(f"/v1/webhooks/{endpoint_id}/deliveries", headers=headers)
        assert got.status_code == 200, got.text
        return list(got.json()["items"])


@pytest.fixture(scope="module")
def platform(
    servers: tuple[str, str],
    redis_url: str,
    simulator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    logs = tmp_path_factory.mktemp("webhooks")
    with scratch_database(servers[0]) as database_url, scratch_namespace(redis_url) as namespace:
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            data_dir=logs,
            redis_namespace=namespace,
            http_port=free_port(),
            projection_batch=200,
            webhooks_allow_private=True,
            webhook_retry_schedule=RETRY,
            webhook_disable_after_s=DISABLE_AFTER_S,
        )
        settings = with_simulator(settings, simulator_url)
        # migrated, an admin made, and closed: the platform's processes need the connections
        container = build(settings)
        root = container.users.create("root@example.com", admin=True)
        admin = {"Authorization": f"Bearer {root.api_key}"}
        container.close()
        processes = launcher(settings, PIXEVO_LOG_LEVEL="INFO")
        with (
            processes.running(("api", "worker", "dispatcher", "projections"), Path(logs)),
            httpx.Client(base_url=settings.api_url(), timeout=30) as http,
        ):

            def healthy() -> bool:
                try:
                    return http.get("/health").status_code == 200
                except httpx.TransportError:
                    return False

            assert wait_for(healthy, timeout=60), (Path(logs) / "api.log").read_text()
            platform = Platform(http, admin)
            yield platform
            for receiver in platform.receivers:
                if receiver.server is not None:
                    receiver.server.shutdown()


def verified(secret: str, received: Received) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


def test_a_completed_generation_is_signed_and_retried_with_one_webhook_id(
    platform: Platform,
) -> None:
    headers = platform.user()
    receiver = platform.receiver(plan=[500, 500])
    endpoint = platform.register(headers, receiver.url, ["generation.completed"])
    generation = platform.generate(headers, 1)

    assert wait_for(lambda: receiver.count() >= 3, timeout=30)
    time.sleep(1.5)  # and nothing more once it was accepted
    assert receiver.count() == 3
    ids = {r.message_id for r in receiver.received}
    assert len(ids) == 1 and next(iter(ids)).startswith("msg_")
    for received in receiver.received:
        payload = verified(endpoint["secret"], received)
        assert payload["type"] == "generation.completed"
        assert payload["data"]["id"] == generation["id"]
        assert payload["data"]["status"] == "completed"
        assert payload["data"]["model"] == "sim-instant"
        assert payload["data"]["outputs"], payload
    assert receiver.received[0].body == receiver.received[2].body  # the same message

    def history() -> list[dict[str, Any]]:
        return platform.deliveries(headers, endpoint["id"])

    assert wait_for(lambda: history()[0]["status"] == "delivered", timeout=10)
    (delivery,) = history()
    assert delivery["attempts"] == 3
    assert delivery["last_status_code"] == 200
    assert delivery["message_id"] in ids
    assert delivery["event_type"] == "generation.completed"
    assert delivery["last_attempt_at"] is not None


def test_events_arrive_in_order_and_are_redelivered_in_order_with_their_ids(
    platform: Platform,
) -> None:
    headers = platform.user()
    receiver = platform.receiver(plan=[503, 503])  # the first one needs retries
    endpoint = platform.register(headers, receiver.url, ["generation.completed"])
    before = datetime.now(UTC) - timedelta(seconds=1)
    made = [platform.generate(headers, 10 + n)["id"] for n in range(3)]

    def delivered_ids() -> list[str]:
        return [r.json["data"]["id"] for r in receiver.received]

    assert wait_for(lambda: receiver.count() >= 5, timeout=30)
    time.sleep(0.5)
    first_seen = list(dict.fromkeys(delivered_ids()))
    assert first_seen == made  # event order, though the first needed three attempts
    assert delivered_ids() == [made[0]] * 3 + made[1:]
    message_ids = list(dict.fromkeys(r.message_id for r in receiver.received))
    for received in receiver.received:
        verified(endpoint["secret"], received)

    again = platform.http.post(
        f"/v1/webhooks/{endpoint['id']}/redeliver",
        json={"since": before.isoformat()},
        headers=headers,
    )
    assert again.status_code == 202, again.text
    assert again.json()["queued"] == 3
    assert wait_for(lambda: receiver.count() >= 8, timeout=30)
    resent = receiver.received[5:]
    assert [r.json["data"]["id"] for r in resent] == made
    assert [r.message_id for r in resent] == message_ids
    for received in resent:
        verified(endpoint["secret"], received)

    # a range that holds only the middle event: only it again
    history = platform.deliveries(headers, endpoint["id"])
    originals = sorted((d for d in history if not d["redelivery"]), key=lambda d: d["occurred_at"])
    middle = originals[1]["occurred_at"]
    middle_at = datetime.fromisoformat(middle)
    one = platform.http.post(
        f"/v1/webhooks/{endpoint['id']}/redeliver",
        json={
            "since": middle,
            "until": (middle_at + timedelta(microseconds=1)).isoformat(),
        },
        headers=headers,
    )
    assert one.status_code == 202, one.text
    assert one.json()["queued"] == 1
    assert wait_for(lambda: receiver.count() >= 9, timeout=30)
    assert receiver.received[8].message_id == message_ids[1]


def test_a_redirect_is_not_followed(platform: Platform) -> None:
    headers = platform.user()
    elsewhere = platform.receiver()
    redirecting = platform.receiver(default=302, location=elsewhere.url)
    endpoint = platform.register(headers, redirecting.url, ["generation.completed"])
    platform.generate(headers, 20)

    def failing() -> bool:
        items = platform.deliveries(headers, endpoint["id"])
        return bool(items) and items[0]["attempts"] >= 2

    assert wait_for(failing, timeout=30)
    (delivery,) = platform.deliveries(headers, endpoint["id"])
    assert delivery["status"] == "failing"
    assert delivery["last_status_code"] == 302
    assert redirecting.count() >= 2
    assert elsewhere.count() == 0


def test_a_failing_endpoint_is_disabled_with_the_reason_then_enabled_and_resumes(
    platform: Platform,
) -> None:
    headers = platform.user()
    receiver = platform.receiver(default=500)
    endpoint = platform.register(headers, receiver.url, ["generation.completed"])
    path = f"/v1/webhooks/{endpoint['id']}"
    generation = platform.generate(headers, 30)

    def disabled() -> bool:
        return bool(platform.http.get(path, headers=headers).json()["status"] == "disabled")

    assert wait_for(disabled, timeout=30)
    shown = platform.http.get(path, headers=headers).json()
    assert "failing since" in shown["disabled_reason"]
    assert "500" in shown["disabled_reason"]
    assert shown["disabled_at"] is not None
    attempts = receiver.count()
    assert attempts >= 2
    receiver.default = 200
    time.sleep(1.5)  # nothing is sent to a disabled endpoint
    assert receiver.count() == attempts

    enabled = platform.http.post(f"{path}/enable", headers=headers)
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["status"] == "active"
    assert wait_for(lambda: receiver.count() > attempts, timeout=30)
    last = receiver.received[-1]
    assert verified(endpoint["secret"], last)["data"]["id"] == generation["id"]
    assert wait_for(
        lambda: platform.deliveries(headers, endpoint["id"])[0]["status"] == "delivered",
        timeout=10,
    )


def test_an_install_and_a_run_of_the_copy_are_delivered(platform: Platform) -> None:
    creator, buyer = platform.user(), platform.user()
    listing = published(platform, creator, "1")  # type: ignore[arg-type]
    receiver = platform.receiver()
    endpoint = platform.register(
        buyer, receiver.url, ["install.created", "workflow_run.completed", "workflow_run.failed"]
    )
    installed = platform.http.post(f"/v1/listings/{listing['id']}/install", headers=buyer)
    assert installed.status_code == 201, installed.text
    install = installed.json()
    started = platform.http.post(
        f"/v1/workflows/{install['workflow_id']}/runs", json={"inputs": {}}, headers=buyer
    )
    assert started.status_code == 202, started.text
    run = finished(platform, buyer, started.json()["id"])  # type: ignore[arg-type]
    assert run["status"] == "completed", run

    assert wait_for(lambda: receiver.count() >= 2, timeout=30)
    messages = [verified(endpoint["secret"], r) for r in receiver.received]
    assert [m["type"] for m in messages] == ["install.created", "workflow_run.completed"]
    assert messages[0]["data"]["id"] == install["install_id"]
    assert messages[0]["data"]["listing_id"] == listing["id"]
    assert messages[0]["data"]["workflow_id"] == install["workflow_id"]
    assert messages[0]["data"]["price_credits"] == "1.0000"
    assert messages[1]["data"]["id"] == run["id"]
    assert messages[1]["data"]["workflow_id"] == install["workflow_id"]
    assert messages[1]["data"]["status"] == "completed"
