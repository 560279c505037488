"""One generation is one trace: from the client's ``traceparent`` through the API, the event
store, the dispatcher, the worker's reactions and the provider call to the settle, read back
from the spans the processes wrote to ``PIXEVO_TRACE_FILE``."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import Container
from tests.support.platform import whole_platform
from tests.support.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def spans_of(path: Path, trace_id: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    spans = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [s for s in spans if s["context"]["trace_id"] == f"0x{trace_id}"]


def a_trace(api_key: str) -> tuple[str, str, dict[str, str]]:
    """A trace the client starts (its id, the client's span, the headers that carry it)."""
    trace_id, parent_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {
        "Authorization": f"Bearer {api_key}",
        "traceparent": f"00-{trace_id}-{parent_span}-01",
    }
    return trace_id, parent_span, headers


def test_one_generation_is_one_trace_from_request_to_settle(
    settings: Settings, container: Container, simulator: str, tmp_path: Path
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    user = container.users.create("traced@example.com", "10")
    # the client starts the trace; the platform continues it
    trace_id, parent_span, headers = a_trace(user.api_key)
    with whole_platform(settings, simulator, tmp_path, trace_file=trace_file) as base:
        answer = httpx.post(
            f"{base}/v1/generations",
            json={"model": "sim-instant", "prompt": "a lighthouse", "params": {"seed": 5}},
            headers=headers,
        )
        assert answer.status_code == 202, answer.text
        generation_id = answer.json()["id"]
        # the response names the trace it continued, under the request's own span
        version, answered_trace, answered_span, _ = answer.headers["traceparent"].split("-")
        assert (version, answered_trace) == ("00", trace_id)
        assert answered_span != parent_span

        def settled() -> bool:
            names = {s["name"] for s in spans_of(trace_file, trace_id)}
            return "billing.settle" in names

        assert wait_for(settled, timeout=60), sorted(
            {s["name"] for s in spans_of(trace_file, trace_id)}
        )
        view = httpx.get(f"{base}/v1/generations/{generation_id}", headers=headers).json()
    assert view["status"] == "completed", view

    spans = spans_of(trace_file, trace_id)
    by_id = {s["context"]["span_id"]: s for s in spans}

    def ancestry(span: dict[str, Any]) -> list[str]:
        names = []
        while span is not None:
            names.append(span["name"])
            span = by_id.get(span["parent_id"])  # type: ignore[assignment]
        return names

    [request] = [s for s in spans if s["name"] == "POST /v1/generations"]
    assert request["parent_id"] == f"0x{parent_span}"
    assert request["resource"]["attributes"]["service.name"] == "pixevo-api"
    saves = [s for s in spans if s["name"] == "eventstore.save"]
    assert any(s["parent_id"] == request["context"]["span_id"] for s in saves)

    [call] = [s for s in spans if s["name"] == "provider.call"]
    assert call["resource"]["attributes"]["service.name"] == "pixevo-worker"
    assert call["attributes"]["pixevo.model"] == "sim-instant"
    job_id = call["attributes"]["pixevo.provider.job_id"]
    assert job_id
    # the provider's HTTP calls are children of the call, and carried the trace on
    assert any(s["parent_id"] == call["context"]["span_id"] for s in spans if "POST" in s["name"])

    # every step hangs, through the dispatcher and the messages, from the client's request
    for name in ("provider.call", "image.pipeline", "billing.settle"):
        [step] = [s for s in spans if s["name"] == name]
        chain = ancestry(step)
        assert chain[-1] == "POST /v1/generations", chain
        assert any(link.startswith("dispatch ") for link in chain), chain
        assert any(link.startswith("react ") for link in chain), chain
    assert {"reaction generate", "reaction process_result", "reaction derive_result"} <= {
        s["name"] for s in spans
    }, sorted({s["name"] for s in spans})

    # the worker's log lines of this generation carry its trace id, the job id among them
    lines = [
        json.loads(line)
        for line in (tmp_path / "worker.log").read_text().splitlines()
        if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("generation_id") == generation_id]
    assert mine
    assert all(line.get("trace_id") == trace_id for line in mine), mine
    assert any(line.get("job_id") == job_id for line in mine)


GRAPH: dict[str, Any] = {
    "inputs": {"prompt": {"type": "text", "default": "a quiet harbour"}},
    "nodes": [
        {
            "id": "gen",
            "op": "generate",
            "params": {"model": "sim-instant", "seed": 3, "width": 256, "height": 256},
            "inputs": {"prompt": "$inputs.prompt"},
        },
        {"id": "gray", "op": "grayscale", "inputs": {"image": "$nodes.gen"}},
    ],
    "outputs": {"final": "$nodes.gray"},
}


def test_a_workflow_run_is_one_trace_with_a_span_per_node(
    settings: Settings, container: Container, simulator: str, tmp_path: Path
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    user = container.users.create("traced-run@example.com", "10")
    plain = {"Authorization": f"Bearer {user.api_key}"}
    with whole_platform(settings, simulator, tmp_path, trace_file=trace_file) as base:
        made = httpx.post(f"{base}/v1/workflows", json={"name": "traced"}, headers=plain)
        assert made.status_code == 201, made.text
        workflow_id = made.json()["id"]
        version = httpx.post(
            f"{base}/v1/workflows/{workflow_id}/versions", json={"graph": GRAPH}, headers=plain
        )
        assert version.status_code == 201, version.text
        trace_id, _, headers = a_trace(user.api_key)
        started = httpx.post(
            f"{base}/v1/workflows/{workflow_id}/runs", json={"inputs": {}}, headers=headers
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]

        def ended() -> bool:
            return "workflow.run" in {s["name"] for s in spans_of(trace_file, trace_id)}

        assert wait_for(ended, timeout=90), sorted(
            {s["name"] for s in spans_of(trace_file, trace_id)}
        )
        run = httpx.get(f"{base}/v1/workflow-runs/{run_id}", headers=plain).json()
    assert run["status"] == "completed", run

    spans = spans_of(trace_file, trace_id)
    [request] = [s for s in spans if s["name"] == "POST /v1/workflows/{workflow_id}/runs"]
    nodes = {
        s["attributes"]["pixevo.node"]: s for s in spans if s["name"].startswith("workflow.node")
    }
    assert set(nodes) == {"gen", "gray"}
    assert nodes["gen"]["attributes"]["pixevo.op"] == "generate"
    assert nodes["gen"]["attributes"]["pixevo.generation_id"]
    assert nodes["gray"]["attributes"]["pixevo.op"] == "grayscale"
    for node in nodes.values():
        assert node["parent_id"] == request["context"]["span_id"]
        assert node["attributes"]["pixevo.workflow_run_id"] == run_id
    # the node's generation ran inside the run's trace: its provider call is in it too
    assert "provider.call" in {s["name"] for s in spans}
    # nodes ran in order, within the run
    [whole] = [s for s in spans if s["name"] == "workflow.run"]
    assert nodes["gen"]["end_time"] <= nodes["gray"]["end_time"] <= whole["end_time"]
