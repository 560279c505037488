"""Workflow runs end to end, every process real: the API, the worker, the dispatcher, the
projections and the simulator. A provider node is an ordinary generation at the simulator; a
local node is pyvips on the images queue."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
import pyvips

from domain.workflow import RUN_TERMINAL
from tests.e2e.test_image_inputs import Platform, platform
from tests.support.processes import wait_for

__all__ = ["platform"]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DIAMOND: dict[str, Any] = {
    "inputs": {"prompt": {"type": "text", "default": "a lighthouse at dusk"}},
    "nodes": [
        {
            "id": "gen",
            "op": "generate",
            "params": {"model": "sim-instant", "seed": 7, "width": 256, "height": 256},
            "inputs": {"prompt": "$inputs.prompt"},
        },
        {
            "id": "up",
            "op": "upscale",
            "params": {"model": "real-esrgan", "scale": 2},
            "inputs": {"image": "$nodes.gen"},
        },
        {"id": "gray", "op": "grayscale", "inputs": {"image": "$nodes.gen"}},
        {
            "id": "small",
            "op": "resize",
            "params": {"width": 512},
            "inputs": {"image": "$nodes.gray"},
        },
        {
            "id": "comp",
            "op": "composite",
            "params": {"x": 0, "y": 0, "opacity": 0.5},
            "inputs": {"base": "$nodes.up", "overlay": "$nodes.gray"},
        },
    ],
    "outputs": {"final": "$nodes.comp", "gray": "$nodes.small"},
}


def workflow(platform: Platform, headers: dict[str, str], graph: dict[str, Any]) -> str:
    made = platform.http.post("/v1/workflows", json={"name": "diamond"}, headers=headers)
    assert made.status_code == 201, made.text
    workflow_id = str(made.json()["id"])
    version = platform.http.post(
        f"/v1/workflows/{workflow_id}/versions", json={"graph": graph}, headers=headers
    )
    assert version.status_code == 201, version.text
    assert version.json()["version"] == 1
    return workflow_id


def finished(
    platform: Platform, headers: dict[str, str], run_id: str, timeout: float = 90
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        response = platform.http.get(f"/v1/workflow-runs/{run_id}", headers=headers)
        if response.status_code == 200:
            seen.clear()
            seen.update(response.json())
        return seen.get("status") in RUN_TERMINAL

    assert wait_for(done, timeout=timeout, interval=0.1), seen
    return seen


def nodes(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["id"]: node for node in run["nodes"]}


def test_a_diamond_runs_its_branches_at_once_and_charges_what_its_nodes_cost(
    platform: Platform,
) -> None:
    headers = platform.user("diamond@example.com")
    workflow_id = workflow(platform, headers, DIAMOND)
    quote = platform.http.post(
        f"/v1/workflows/{workflow_id}/quote", json={"inputs": {}}, headers=headers
    )
    assert quote.status_code == 200, quote.text
    quoted = {n["id"]: Decimal(n["cost_credits"]) for n in quote.json()["nodes"]}
    assert quoted["gray"] == 0 and quoted["gen"] > 0 and quoted["up"] > 0
    started = platform.http.post(
        f"/v1/workflows/{workflow_id}/runs", json={"inputs": {}}, headers=headers
    )
    assert started.status_code == 202, started.text
    run = finished(platform, headers, started.json()["id"])
    assert run["status"] == "completed", run
    by_id = nodes(run)
    assert all(n["status"] == "completed" for n in by_id.values()), by_id
    # the two middle branches overlapped: grayscale finished while the upscale was running
    up, gray = by_id["up"], by_id["gray"]
    assert up["started_at"] <= gray["completed_at"] <= up["completed_at"], (up, gray)
    assert by_id["comp"]["started_at"] >= up["completed_at"]
    # outputs are fetchable images of the right size
    final = platform.http.get(run["outputs"]["final"]["url"], headers=headers)
    assert final.status_code == 200
    image = pyvips.Image.new_from_buffer(final.content, "")
    assert (image.width, image.height) == (512, 512)
    # charged = the sum of the nodes' costs, never above the quote
    charged = sum(Decimal(n["charged_credits"]) for n in by_id.values())
    assert Decimal(run["charged_credits"]) == charged <= Decimal(quote.json()["cost_credits"])

    def settled() -> bool:
        entries = platform.http.get("/v1/credits/ledger", headers=headers).json()["items"]
        return any(e["cause"]["type"] == "workflow_node" for e in entries)

    assert wait_for(settled, timeout=20)
    entries = platform.http.get("/v1/credits/ledger", headers=headers).json()["items"]
    spent = {
        e["cause"]["id"].split("/")[1]: Decimal(e["amount"])
        for e in entries
        if e["cause"]["type"] == "workflow_node"
    }
    assert spent == {
        n: c for n, c in ((i, Decimal(v["charged_credits"])) for i, v in by_id.items()) if c
    }
    balance = platform.http.get("/v1/credits", headers=headers).json()
    assert Decimal(balance["balance"]) == Decimal(20) - charged
    assert Decimal(balance["held"]) == 0


def test_invalid_graphs_name_each_problem(platform: Platform) -> None:
    headers = platform.user("invalid@example.com")
    made = platform.http.post("/v1/workflows", json={"name": "broken"}, headers=headers)
    workflow_id = made.json()["id"]
    graph = {
        "inputs": {"n": {"type": "integer"}},
        "nodes": [
            {"id": "a", "op": "grayscale", "inputs": {"image": "$nodes.b"}},
            {"id": "b", "op": "grayscale", "inputs": {"image": "$nodes.a"}},
            {"id": "c", "op": "sharpen"},
            {
                "id": "d",
                "op": "upscale",
                "params": {"model": "flux-schnell"},
                "inputs": {"image": "$nodes.e"},
            },
            {"id": "e", "op": "resize", "params": {"width": 10}},
            {"id": "f", "op": "composite", "inputs": {"base": "$inputs.n", "overlay": "$nodes.e"}},
        ],
        "outputs": {"out": "$nodes.d"},
    }
    answer = platform.http.post(
        f"/v1/workflows/{workflow_id}/versions", json={"graph": graph}, headers=headers
    )
    assert answer.status_code == 422, answer.text
    fields = {e["field"] for e in answer.json()["errors"]}
    assert {"nodes.c.op", "nodes.e.inputs.image", "nodes.f.inputs.base"} <= fields, fields
    cyclic = {"nodes": graph["nodes"][:2], "outputs": {"out": "$nodes.a"}}
    answer = platform.http.post(
        f"/v1/workflows/{workflow_id}/versions", json={"graph": cyclic}, headers=headers
    )
    assert answer.status_code == 422
    assert {e["field"] for e in answer.json()["errors"]} == {"nodes.a.inputs", "nodes.b.inputs"}
    wrong_kind = {
        "nodes": [
            {"id": "g", "op": "generate", "params": {"model": "sim-instant", "prompt": "x"}},
            {
                "id": "d",
                "op": "upscale",
                "params": {"model": "flux-schnell"},
                "inputs": {"image": "$nodes.g"},
            },
        ]
    }
    answer = platform.http.post(
        f"/v1/workflows/{workflow_id}/versions", json={"graph": wrong_kind}, headers=headers
    )
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["errors"]] == ["nodes.d.params.model"]
    other = platform.user("other@example.com")
    assert platform.http.get(f"/v1/workflows/{workflow_id}", headers=other).status_code == 404


OUTAGE: dict[str, Any] = {
    "nodes": [
        {
            "id": "gen",
            "op": "generate",
            "params": {
                "model": "sim-instant",
                "prompt": "a red barn",
                "seed": 3,
                "width": 256,
                "height": 256,
            },
        },
        {
            "id": "up",
            "op": "upscale",
            "params": {"model": "clarity-upscaler", "scale": 2, "prompt": "weathered wood"},
            "inputs": {"image": "$nodes.gen"},
        },
        {"id": "big", "op": "resize", "params": {"width": 128}, "inputs": {"image": "$nodes.up"}},
        {"id": "gray", "op": "grayscale", "inputs": {"image": "$nodes.gen"}},
    ],
    "outputs": {"small": "$nodes.big", "gray": "$nodes.gray"},
}


def test_a_failed_node_skips_its_downstream_and_a_retry_reruns_only_it(
    platform: Platform,
) -> None:
    headers = platform.user("outage@example.com")
    workflow_id = workflow(platform, headers, OUTAGE)
    httpx.post(f"{platform.simulator}/_sim/faults/fal", json={"reject_content": "weathered"})
    started = platform.http.post(
        f"/v1/workflows/{workflow_id}/runs",
        json={"inputs": {}, "allow_fallback": False},
        headers=headers,
    )
    run_id = started.json()["id"]
    run = finished(platform, headers, run_id)
    by_id = nodes(run)
    assert run["status"] == "failed", run
    assert by_id["up"]["status"] == "failed" and by_id["big"]["status"] == "skipped"
    assert by_id["gray"]["status"] == "completed"  # the independent branch finished
    assert Decimal(run["charged_credits"]) == Decimal(by_id["gen"]["charged_credits"]) > 0
    generation = by_id["gen"]["generation_id"]
    # a skipped node is not retryable on its own terms: it is, with what it waits on
    refused = platform.http.post(f"/v1/workflow-runs/{run_id}/nodes/gen/retry", headers=headers)
    assert refused.status_code == 409
    httpx.delete(f"{platform.simulator}/_sim/faults")
    retried = platform.http.post(f"/v1/workflow-runs/{run_id}/nodes/up/retry", headers=headers)
    assert retried.status_code == 202, retried.text

    def reran() -> bool:
        return (
            nodes(platform.http.get(f"/v1/workflow-runs/{run_id}", headers=headers).json())["up"][
                "attempts"
            ]
            == 2
        )

    assert wait_for(reran, timeout=20)
    run = finished(platform, headers, run_id)
    assert run["status"] == "completed", run
    by_id = nodes(run)
    assert by_id["gen"]["generation_id"] == generation  # reused, not re-run
    assert by_id["up"]["attempts"] == 2 and by_id["gen"]["attempts"] == 1
    # history and time travel: the run as it stood when it failed
    history = platform.http.get(f"/v1/workflow-runs/{run_id}/history", headers=headers).json()
    ended = [e["position"] for e in history["items"] if e["type"] == "Ended"]
    assert len(ended) == 2
    then = platform.http.get(f"/v1/workflow-runs/{run_id}?at={ended[0]}", headers=headers)
    assert then.status_code == 200 and then.json()["status"] == "failed"
    # fork from the upscale with other params: the generation upstream is reused
    forked = platform.http.post(
        f"/v1/workflow-runs/{run_id}/fork",
        json={"from_node": "big", "params": {"big": {"width": 64}}},
        headers=headers,
    )
    assert forked.status_code == 202, forked.text
    fork = finished(platform, headers, forked.json()["id"])
    assert fork["status"] == "completed" and fork["forked_from"]["run_id"] == run_id
    fork_nodes = nodes(fork)
    assert fork_nodes["up"]["generation_id"] == by_id["up"]["generation_id"]
    assert fork_nodes["big"]["output"]["width"] == 64
    assert Decimal(fork["charged_credits"]) == 0  # only a local node ran
    # the local-op cache: the same input bytes, op and params reuse the stored output
    again = platform.http.post(
        f"/v1/workflow-runs/{run_id}/fork", json={"from_node": "gray"}, headers=headers
    )
    assert nodes(finished(platform, headers, again.json()["id"]))["gray"]["cached"] is True
    other = platform.user("stranger@example.com")
    assert platform.http.get(f"/v1/workflow-runs/{run_id}", headers=other).status_code == 404
    assert (
        platform.http.post(f"/v1/workflow-runs/{run_id}/cancel", headers=other).status_code == 404
    )


def test_a_run_that_cannot_be_paid_is_refused_and_a_cancel_stops_what_has_not_run(
    platform: Platform,
) -> None:
    poor = platform.user("poor@example.com", credits="0.01")
    workflow_id = workflow(platform, poor, DIAMOND)
    refused = platform.http.post(
        f"/v1/workflows/{workflow_id}/runs", json={"inputs": {}}, headers=poor
    )
    assert refused.status_code == 402, refused.text
    headers = platform.user("canceller@example.com")
    workflow_id = workflow(platform, headers, DIAMOND)
    httpx.post(f"{platform.simulator}/_sim/faults/replicate", json={"latency_scale": 5})
    started = platform.http.post(
        f"/v1/workflows/{workflow_id}/runs", json={"inputs": {}}, headers=headers
    )
    run_id = started.json()["id"]

    def upscaling() -> bool:
        run = platform.http.get(f"/v1/workflow-runs/{run_id}", headers=headers).json()
        return nodes(run)["up"]["status"] == "running"

    assert wait_for(upscaling, timeout=30)
    cancelled = platform.http.post(f"/v1/workflow-runs/{run_id}/cancel", headers=headers)
    assert cancelled.status_code == 202, cancelled.text
    run = finished(platform, headers, run_id)
    by_id = nodes(run)
    assert run["status"] == "cancelled", run
    assert by_id["comp"]["status"] == "cancelled" and by_id["comp"]["started_at"] is None
    assert by_id["up"]["status"] == "cancelled"
    assert (
        platform.http.post(f"/v1/workflow-runs/{run_id}/cancel", headers=headers).status_code == 409
    )

    def released() -> bool:
        balance = platform.http.get("/v1/credits", headers=headers).json()
        return Decimal(balance["held"]) == 0

    assert wait_for(released, timeout=20)
    balance = platform.http.get("/v1/credits", headers=headers).json()
    assert Decimal(balance["balance"]) == Decimal(20) - Decimal(run["charged_credits"])
