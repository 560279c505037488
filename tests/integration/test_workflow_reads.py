"""The workflow reads and a run's live stream through a real API process: the run from the read
model (or the write side before it is projected), other users' 404s, and the run's SSE stream
resuming with Last-Event-ID without a gap or a duplicate, with its provider node's progress and
run messages on the user feed."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, connect_sse

from application.live import LiveMessage
from domain.ids import uuid7
from domain.workflow import WorkflowExecution, WorkflowTemplate
from interfaces.bootstrap import Container
from tests.integration.test_workflow_projection import GRAPH, OUTPUT, later, new_run
from tests.support.processes import child_env, free_port, running, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def api(container: Container, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = child_env(container.settings, PIXEVO_HTTP_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    with running([sys.executable, "-m", "interfaces.cli", "api"], env, log):

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/health").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(healthy, timeout=30), log.read_text()
        yield base


def client(base: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def read(
    http: httpx.Client,
    path: str,
    until: Callable[[list[ServerSentEvent]], bool],
    last_event_id: str | None = None,
) -> list[ServerSentEvent]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[ServerSentEvent] = []
    with connect_sse(http, "GET", path, headers=headers, timeout=30) as source:
        assert source.response.status_code == 200, source.response.read()
        for event in source.iter_sse():
            if not event.data:
                continue
            events.append(event)
            if until(events):
                break
    return events


def stored_positions(container: Container, run: WorkflowExecution) -> list[int]:
    with container.pool.connection() as conn:
        rows = conn.execute(
            "SELECT position FROM proj_workflows.feed WHERE run_id = %s ORDER BY position",
            [run.id],
        ).fetchall()
    return [int(r[0]) for r in rows]


def test_run_reads_and_its_stream_resume_without_gap_or_duplicate(
    container: Container, api: str
) -> None:
    alice = container.users.create("alice@example.com")
    bob = container.users.create("bob@example.com")
    wf = WorkflowTemplate.create(uuid7(), alice.user_id, "wf", "three nodes")
    wf.add_version(GRAPH)
    container.workflows.save(wf)
    run = new_run(container, alice.user_id, wf.id)
    projection = container.projection("workflows")

    with client(api, alice.api_key) as a, client(api, bob.api_key) as b:
        # not projected yet: the write side answers
        early = a.get(f"/v1/workflow-runs/{run.id}")
        assert early.status_code == 200, early.text
        assert early.json()["status"] == "queued"
        assert b.get(f"/v1/workflow-runs/{run.id}").status_code == 404
        assert a.get(f"/v1/workflows/{wf.id}").json()["latest_version"] == 1
        assert a.get(f"/v1/workflows/{wf.id}/versions/1").json()["graph"] == GRAPH
        assert a.get(f"/v1/workflows/{wf.id}/versions/2").status_code == 404
        assert b.get(f"/v1/workflows/{wf.id}").status_code == 404
        assert b.get(f"/v1/workflows/{wf.id}/versions/1").status_code == 404

        projection.catch_up()
        assert a.get(f"/v1/workflows/{wf.id}").json()["latest_version"] == 1
        assert a.get(f"/v1/workflows/{wf.id}/versions/1").json()["graph"] == GRAPH
        assert b.get(f"/v1/workflows/{wf.id}").status_code == 404
        assert b.get(f"/v1/workflows/{wf.id}/versions/1").status_code == 404
        assert [w["id"] for w in a.get("/v1/workflows").json()["items"]] == [str(wf.id)]
        assert [r["id"] for r in a.get("/v1/workflow-runs").json()["items"]] == [str(run.id)]
        assert b.get("/v1/workflow-runs").json()["items"] == []
        path = f"/v1/workflow-runs/{run.id}/events"
        assert b.get(path).status_code == 404

        run.fund(uuid7(), 1020, later)
        run.start_node("gen", 1)
        container.workflows.save(run)
        projection.catch_up()
        generation_id = run.node("gen")["generation_id"]
        progressed = {"sent": False}

        def drive(events: list[ServerSentEvent]) -> bool:
            """Once the stored changes are in: a provider progress, then the rest live."""
            if len(events) == 3 and not progressed["sent"]:
                progressed["sent"] = True
                time.sleep(0.3)  # the stream follows the node's generation by now
                container.live.publish(
                    [
                        LiveMessage(
                            type="progress",
                            generation_id=generation_id,
                            user_id=alice.user_id,
                            data={"generation_id": str(generation_id), "percent": 50.0},
                        )
                    ]
                )
            if events[-1].event == "node_progress":
                run.complete_node("gen", 1, OUTPUT, later, charged=900)
                run.complete_node("grey", 1, OUTPUT, later)
                run.complete_node("small", 1, OUTPUT, later)
                container.workflows.save(run)
                projection.catch_up()  # publishes to Redis after commit
            return events[-1].event.startswith("workflow_run.") and events[-1].event != (
                "workflow_run.status"
            )

        first = read(a, path, drive)
        assert run.status == "completed"
        positions = stored_positions(container, run)
        changes = [e for e in first if e.event != "node_progress"]
        assert [int(e.id) for e in changes] == positions  # every change, once, in order
        assert first[-1].event == "workflow_run.completed"
        nodes = [e for e in first if e.event == "node_progress"]
        assert len(nodes) == 1
        assert '"node":"gen"' in nodes[0].data and '"percent":50.0' in nodes[0].data
        progress = [float(_json(e)["progress"]) for e in first]
        assert progress == sorted(progress) and progress[-1] == 100.0

        # resume from the middle: the rest from the store, none twice
        middle = changes[2].id
        again = read(a, path, lambda e: e[-1].event == "workflow_run.completed", middle)
        assert [int(e.id) for e in again] == [p for p in positions if p > int(middle)]
        # the client has the final event: nothing more to follow
        assert a.get(path, headers={"Last-Event-ID": changes[-1].id}).status_code == 204
        doc = a.get(f"/v1/workflow-runs/{run.id}").json()
        assert doc["status"] == "completed" and doc["progress"] == 100.0

        # the user feed: run changes with "<generations>.<workflows>" ids, resumable
        feed = read(a, "/v1/events", lambda e: len(e) == len(positions), last_event_id="0")
        assert [e.id for e in feed] == [f"0.{p}" for p in positions]
        rest = read(
            a, "/v1/events", lambda e: len(e) == len(positions) - 2, last_event_id=feed[1].id
        )
        assert [e.id for e in rest] == [f"0.{p}" for p in positions[2:]]
        assert a.get("/v1/events", headers={"Last-Event-ID": "1.x"}).status_code == 400


def _json(event: ServerSentEvent) -> dict[str, Any]:
    data: dict[str, Any] = event.json()
    return data
