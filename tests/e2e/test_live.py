"""Live feeds through real API processes: SSE (httpx-sse) and WebSocket, Redis pub/sub between
the processes, the worker and projection processes producing the events."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import redis
from httpx_sse import ServerSentEvent, connect_sse
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from application.live import generation_channel
from infrastructure.settings import Settings
from infrastructure.tokens import StreamTokens, stream_secret
from interfaces.bootstrap import Container, build
from tests.support.platform import platform_processes, with_simulator
from tests.support.processes import child_env, free_port, running, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FINAL = ("completed", "failed", "cancelled", "blocked")
#: The event types that have a position of their own (``derivatives`` follow ``completed``).
STORED = ("status", *FINAL, "derivatives")


@dataclass
class Api:
    base: str

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)


@pytest.fixture
def platform(settings: Settings, simulator: str, tmp_path: Path) -> Iterator[Container]:
    settings = with_simulator(replace(settings, projection_batch=200), simulator)
    container = build(settings)
    with platform_processes(settings, tmp_path):
        yield container
    container.close()


def start_api(stack: ExitStack, settings: Settings, logs: Path, name: str) -> Api:
    port = free_port()
    env = child_env(settings, PIXEVO_HTTP_PORT=str(port))
    argv = [sys.executable, "-m", "interfaces.cli", "api"]
    stack.enter_context(running(argv, env, logs / f"{name}.log"))
    api = Api(f"http://127.0.0.1:{port}")

    def healthy() -> bool:
        try:
            return httpx.get(f"{api.base}/health").status_code == 200
        except httpx.TransportError:
            return False

    assert wait_for(healthy, timeout=30), (logs / f"{name}.log").read_text()
    return api


@pytest.fixture
def apis(platform: Container, tmp_path: Path) -> Iterator[list[Api]]:
    """Two API processes on the same platform."""
    with ExitStack() as stack:
        yield [start_api(stack, platform.settings, tmp_path, f"api-{i}") for i in (1, 2)]


def slow_provider(simulator: str, provider: str, scale: float) -> None:
    response = httpx.post(f"{simulator}/_sim/faults/{provider}", json={"latency_scale": scale})
    assert response.status_code == 200, response.text


def key_of(platform: Container, email: str, credits: str = "20") -> str:
    return platform.users.create(email, credits).api_key


def create(client: httpx.Client, model: str = "flux-schnell", **params: Any) -> str:
    body = {"model": model, "prompt": "a lighthouse at dusk", "params": {"seed": 7, **params}}
    response = client.post("/v1/generations", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def read(
    client: httpx.Client,
    path: str,
    *,
    until: Any = None,
    last_event_id: str | None = None,
    timeout: float = 60,
) -> list[ServerSentEvent]:
    """Reads a stream until it ends or ``until(events)`` is true."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[ServerSentEvent] = []
    deadline = time.monotonic() + timeout
    with connect_sse(client, "GET", path, headers=headers, timeout=timeout) as source:
        assert source.response.status_code == 200, source.response.read()
        for event in source.iter_sse():
            if event.retry is not None and not event.data:
                continue  # the opening comment and retry hint
            assert event.data, event  # comments (heartbeats) must not dispatch empty events
            events.append(event)
            if until is not None and until(events):
                break
            assert time.monotonic() < deadline, [e.event for e in events]
    return events


def stored_positions(platform: Container, generation_id: str) -> list[int]:
    with platform.pool.connection() as conn:
        rows = conn.execute(
            "SELECT position FROM proj_generations.feed WHERE generation_id = %s ORDER BY position",
            [generation_id],
        ).fetchall()
    return [int(row[0]) for row in rows]


def statuses(events: list[ServerSentEvent]) -> list[str]:
    return [
        json.loads(e.data)["status"] if e.event == "status" else e.event
        for e in events
        if e.event in STORED
    ]


def test_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(
    platform: Container, apis: list[Api], simulator: str
) -> None:
    slow_provider(simulator, "replicate", 1.5)  # flux-schnell: a few seconds of "running"
    api = apis[0]
    with api.client(key_of(platform, "resume@example.com")) as client:
        generation_id = create(client)
        path = f"/v1/generations/{generation_id}/events"
        first = read(client, path, until=lambda events: len(events) >= 1)
        assert first[0].event == "status"

        def running() -> bool:
            return client.get(f"/v1/generations/{generation_id}").json()["status"] == "running"

        assert wait_for(running, timeout=30)  # funded, queued, running happened while away
        second = read(client, path, last_event_id=first[-1].id)

    stored = [e for e in first + second if e.event in STORED]
    ids = [int(e.id) for e in stored]
    assert ids == stored_positions(platform, generation_id)  # every stored event, once, in order
    assert statuses(first + second) == [
        "requested",
        "funded",
        "queued",
        "running",
        "processing",
        "completed",
        "derivatives",  # the stream stays open for them, then ends
    ]
    missed = [e for e in second if e.event in STORED and int(e.id) <= ids[3]]
    assert [json.loads(e.data)["status"] for e in missed] == ["funded", "queued", "running"]
    assert any(e.event == "progress" for e in second)  # live after the catch-up
    assert second[-1].event == "derivatives"


def generation_of(event: ServerSentEvent) -> str:
    data = json.loads(event.data)
    return str(data.get("generation_id") or data["id"])


def test_a_subscriber_on_another_api_process_receives_the_worker_s_events(
    platform: Container, apis: list[Api]
) -> None:
    key = key_of(platform, "two-processes@example.com")
    made: list[str] = []
    events: list[ServerSentEvent] = []
    with (
        apis[0].client(key) as producer,
        apis[1].client(key) as subscriber,
        connect_sse(subscriber, "GET", "/v1/events", timeout=60) as source,
    ):
        assert source.response.status_code == 200
        for event in source.iter_sse():
            if not made:  # the stream's opening message: subscribed, so make one now
                made.append(create(producer))
            if event.data:
                events.append(event)
            if event.event == "derivatives":
                break
    mine = [e for e in events if generation_of(e) == made[0]]
    assert statuses(mine) == [
        *("requested", "funded", "queued", "running", "processing", "completed", "derivatives")
    ]
    shown, derived = (json.loads(e.data)["result"] for e in mine[-2:])
    assert shown["url"].endswith("/assets/original")
    kinds = {d["kind"] for d in shown["derivatives"]}
    assert kinds == {"thumb", "preview"}  # what a viewer needs, the moment it is visible
    assert {d["kind"] for d in derived["derivatives"]} > kinds  # the rest, when they are made


def test_estimated_progress_rises_stays_below_100_and_the_final_event_carries_the_result(
    platform: Container, apis: list[Api], simulator: str
) -> None:
    slow_provider(simulator, "replicate", 2.0)  # flux-schnell reports no percentage
    with apis[0].client(key_of(platform, "estimate@example.com")) as client:
        generation_id = create(client)
        seen: dict[str, Any] = {}

        def running() -> bool:
            seen.update(client.get(f"/v1/generations/{generation_id}").json())
            return bool(seen["status"] == "running")

        assert wait_for(running, timeout=30)
        assert seen["progress"]["estimated"] is True  # the GET shows the estimate too
        assert 0 <= seen["progress"]["percent"] < 100
        events = read(client, f"/v1/generations/{generation_id}/events")
    progress = [json.loads(e.data) for e in events if e.event == "progress"]
    assert len(progress) >= 3, [e.event for e in events]
    assert all(p["estimated"] is True for p in progress)
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents)
    assert percents[-1] > percents[0]
    assert all(0 < p < 100 for p in percents)
    assert [e.event for e in events[-2:]] == ["completed", "derivatives"]
    final = events[-2]
    result = json.loads(final.data)
    assert result["status"] == "completed"
    assert result["result"]["url"] == f"/v1/generations/{generation_id}/assets/original"
    assert result["progress"] is None


def test_a_streaming_provider_sends_real_progress_and_previews_at_most_twice_a_second(
    platform: Container, apis: list[Api], simulator: str
) -> None:
    slow_provider(simulator, "fal", 0.6)  # flux-dev-fal streams percentages and previews
    with apis[0].client(key_of(platform, "previews@example.com")) as client:
        generation_id = create(client, "flux-dev-fal", width=512, height=512)
        started = time.monotonic()
        events = read(client, f"/v1/generations/{generation_id}/events")
        took = time.monotonic() - started
        progress = [json.loads(e.data) for e in events if e.event == "progress"]
        assert progress, [e.event for e in events]
        assert all(p["estimated"] is False for p in progress)
        assert len(progress) <= 2 * took + 1
        previews = [p["preview_url"] for p in progress if "preview_url" in p]
        assert previews
        image = client.get(previews[-1])
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/jpeg"
        assert image.content[:2] == b"\xff\xd8"
    assert [e.event for e in events[-2:]] == ["completed", "derivatives"]


def test_a_finished_generation_sends_its_final_event_and_then_204(
    platform: Container, apis: list[Api]
) -> None:
    with apis[0].client(key_of(platform, "finished@example.com")) as client:
        generation_id = create(client, "sim-instant")

        def completed() -> bool:
            return client.get(f"/v1/generations/{generation_id}").json()["status"] == "completed"

        assert wait_for(completed, timeout=30)
        path = f"/v1/generations/{generation_id}/events"
        # five statuses, completed, then derivatives once they are made
        assert wait_for(lambda: len(stored_positions(platform, generation_id)) == 7, timeout=10)
        events = read(client, path)
        assert [e.event for e in events] == ["completed"]
        again = client.get(path, headers={"Last-Event-ID": events[0].id})
        assert again.status_code == 204
        # neither the finished stream nor the 204 left a subscription behind
        channel = generation_channel(platform.settings.redis_namespace, UUID(generation_id))
        with redis.Redis.from_url(platform.redis_url) as r:
            assert wait_for(lambda: r.pubsub_numsub(channel)[0][1] == 0, timeout=10)
        bad = client.get(path, headers={"Last-Event-ID": "not-a-number"})
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")


def test_streams_are_private_and_stream_tokens_are_bound_and_short_lived(
    platform: Container, apis: list[Api]
) -> None:
    alice, bob = key_of(platform, "alice@example.com"), key_of(platform, "bob@example.com")
    api = apis[0]
    with api.client(alice) as a, api.client(bob) as b, api.client() as anonymous:
        generation_id = create(a, "sim-instant")
        path = f"/v1/generations/{generation_id}/events"
        assert b.get(path).status_code == 404
        assert anonymous.get(path).status_code == 401

        issued = a.post("/v1/stream-tokens")
        assert issued.status_code == 201
        token = issued.json()["token"]
        events = read(anonymous, f"{path}?token={token}", until=lambda e: e[-1].event in FINAL)
        assert events[-1].event == "completed"
        # Bob's key with Alice's token: refused, not mixed up
        assert b.get(f"{path}?token={token}").status_code == 401
        # Alice's token cannot open Bob's generation
        bobs = create(b, "sim-instant")
        assert anonymous.get(f"/v1/generations/{bobs}/events?token={token}").status_code == 404
        # expired, tampered, or for another purpose
        tokens = StreamTokens(stream_secret(None, platform.settings.data_dir))
        user_id = a.get("/v1/me").json()["user_id"]
        old, _ = tokens.issue(UUID(user_id), now=datetime.now(UTC) - timedelta(hours=1))
        expired = anonymous.get(f"{path}?token={old}")
        assert expired.status_code == 401
        assert "expired" in expired.json()["detail"]
        assert anonymous.get(f"{path}?token={token[:-2]}xx").status_code == 401
        # a token is only for the feeds
        assert anonymous.get(f"/v1/credits?token={token}").status_code == 401

        # the WebSocket feed, authenticated by the token
        ws_url = api.base.replace("http", "ws") + f"/v1/ws?token={token}"
        with ws_connect(ws_url) as socket:
            time.sleep(0.3)  # subscribed before the generation is made
            mine = create(a, "sim-instant")
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["type"] not in FINAL:
                seen.append(json.loads(socket.recv(timeout=30)))
        assert {m["type"] for m in seen} >= {"status", "completed"}
        assert all(set(m) == {"type", "id", "data"} for m in seen)
        assert seen[-1]["data"]["id"] == mine
        refused = api.base.replace("http", "ws") + f"/v1/ws?token={old}"
        with pytest.raises(InvalidStatus, match=r"HTTP 40[13]"), ws_connect(refused):
            pass


def test_the_user_feed_resumes_and_catches_up_what_redis_never_delivered(
    platform: Container, tmp_path: Path
) -> None:
    """A short heartbeat, so catch-up reads come within a second or two; a feed row written
    without being published (as if Redis lost it) still reaches the subscriber."""
    settings = replace(platform.settings, sse_heartbeat_s=0.3)
    with ExitStack() as stack:
        api = start_api(stack, settings, tmp_path, "api-short-heartbeat")
        with api.client(key_of(platform, "catch-up@example.com")) as client:
            generation_id = create(client, "sim-instant")
            user_id = UUID(client.get("/v1/me").json()["user_id"])
            assert wait_for(lambda: len(stored_positions(platform, generation_id)) == 7, 30)
            first = stored_positions(platform, generation_id)[0]
            # resume from the first event: the six after it, from the store
            resumed = read(
                client, "/v1/events", last_event_id=str(first), until=lambda e: len(e) >= 6
            )
            assert [int(e.id) for e in resumed] == stored_positions(platform, generation_id)[1:]
            lost = max(stored_positions(platform, generation_id)) + 1_000_000

            def write_unpublished_row(events: list[ServerSentEvent]) -> bool:
                if not events:  # the first heartbeat: subscribed; now the lost message
                    with platform.pool.connection() as conn:
                        conn.execute(
                            "INSERT INTO proj_generations.feed (position, created_at, user_id, "
                            "generation_id, type, data) VALUES (%s, now(), %s, %s, 'status', "
                            "%s::jsonb)",
                            [lost, user_id, generation_id, json.dumps(lost_data(generation_id))],
                        )
                return any(e.event == "status" for e in events)

            caught = read_with_heartbeats(client, "/v1/events", until=write_unpublished_row)
            assert [int(e.id) for e in caught if e.event == "status"] == [lost]


def lost_data(generation_id: str) -> dict[str, Any]:
    return {
        "generation_id": generation_id,
        "status": "completed",
        "model": "sim-instant",
        "provider": "replicate",
        "notice": None,
        "fallback_from": None,
        "at": datetime.now(UTC).isoformat(),
    }


def read_with_heartbeats(
    client: httpx.Client, path: str, *, until: Any, timeout: float = 30
) -> list[ServerSentEvent]:
    """Like :func:`read`, but ``until`` also sees the heartbeats (as an unchanged list)."""
    events: list[ServerSentEvent] = []
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, timeout=timeout) as response:
        assert response.status_code == 200
        block: list[str] = []
        for line in response.iter_lines():
            assert time.monotonic() < deadline, events
            if line.startswith(":") and "heartbeat" in line and until(events):
                break
            if line:
                block.append(line)
                continue
            fields = dict(item.split(": ", 1) for item in block if ": " in item)
            block = []
            if "data" in fields:
                events.append(
                    ServerSentEvent(fields.get("event", ""), fields["data"], fields.get("id", ""))
                )
                if until(events):
                    break
    return events


def test_streams_opened_together_on_a_fresh_process_all_receive(
    platform: Container, tmp_path: Path
) -> None:
    """Concurrent first subscriptions must share one pub/sub connection (redis-py opens one per
    caller when none exists yet, and only the last is read)."""
    slow_catch_up = replace(platform.settings, sse_heartbeat_s=300)  # only live delivery counts
    with ExitStack() as stack:
        api = start_api(stack, slow_catch_up, tmp_path, "api-fresh")
        keys = [key_of(platform, f"together-{n}@example.com") for n in range(6)]
        clients = [stack.enter_context(api.client(key)) for key in keys]
        with ThreadPoolExecutor(6) as pool:
            opened = [
                pool.submit(lambda c=c: read(c, "/v1/events", until=bool, timeout=30))
                for c in clients
            ]
            time.sleep(1.0)  # every stream is subscribed by now
            made = [create(c, "sim-instant") for c in clients]
            received = [f.result(timeout=60) for f in opened]
        for generation_id, events in zip(made, received, strict=True):
            assert generation_of(events[0]) == generation_id
