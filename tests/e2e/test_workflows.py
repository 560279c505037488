"""Workflow runs end to end, every process real: the API, the worker, the dispatcher, the
projections and the simulator. A provider node is an ordinary generation at the simulator; a
local node is pyvips on the images queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyvips

from domain.workflow import RUN_TERMINAL
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from tests.e2e.test_image_inputs import Platform, platform
from tests.support.platform import with_simulator
from tests.support.processes import (
    child_env,
    dramatiq_worker,
    free_port,
    launcher,
    running,
    wait_for,
)

__all__ = ["platform"]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A provider that stays down fails its generation after 4 s of deferral, not an hour."""
    return replace(settings, defer_limit_s=4.0)


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
    keyed = {**headers, "Idempotency-Key": "diamond-1"}
    started = platform.http.post(
        f"/v1/workflows/{workflow_id}/runs", json={"inputs": {}}, headers=keyed
    )
    assert started.status_code == 202, started.text
    again = platform.http.post(
        f"/v1/workflows/{workflow_id}/runs", json={"inputs": {}}, headers=keyed
    )
    assert again.status_code == 202 and again.json()["id"] == started.json()["id"]
    other_body = {"inputs": {"prompt": "another"}}
    clash = platform.http.post(f"/v1/workflows/{workflow_id}/runs", json=other_body, headers=keyed)
    assert clash.status_code == 409, clash.text
    run = finished(platform, headers, started.json()["id"])
    assert run["status"] == "completed", run
    listed = platform.http.get("/v1/workflow-runs", headers=headers).json()["items"]
    assert [r["id"] for r in listed] == [run["id"]]
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
    # the dispute tool explains the charges node by node, from the event stores
    audit = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "audit", "run", run["id"], "--json"],
        env=child_env(platform.container.settings),
        capture_output=True,
        check=False,
    )
    assert audit.returncode == 0, (audit.stdout.decode(), audit.stderr.decode()[-3000:])
    report = json.loads(audit.stdout)
    assert report["agrees"] is True
    assert {n["node"]: n["in_ledger"] for n in report["nodes"]} == {
        i: v["charged_credits"] for i, v in by_id.items()
    }


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
            "params": {"model": "clarity-upscaler", "scale": 2},
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
    httpx.post(f"{platform.simulator}/_sim/faults/fal", json={"outage": True})
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
    # retried once the provider's breaker lets calls through again (else the retry would wait
    # out its own defer limit of 4 s behind the open breaker, and fail again)
    assert wait_for(lambda: not platform.container.breakers.is_open("fal"), timeout=20)
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


@pytest.fixture
def killable(
    settings: Settings, simulator: str, tmp_path: Path
) -> Iterator[tuple[Container, httpx.Client, dict[str, subprocess.Popen[bytes]]]]:
    """The platform with its worker at hand (to kill); the API a process of its own, which
    the simulator fetches the upscale's input from."""
    settings = with_simulator(
        replace(settings, projection_batch=200, http_port=free_port()), simulator
    )
    container = build(settings)
    with (
        launcher(settings, PIXEVO_LOG_LEVEL="INFO").running(
            ("api", "worker", "dispatcher", "projections"), tmp_path
        ) as processes,
        httpx.Client(base_url=settings.api_url(), timeout=30) as http,
    ):
        assert wait_for(lambda: _healthy(http), timeout=60)
        yield container, http, processes
    container.close()


def _healthy(http: httpx.Client) -> bool:
    try:
        return http.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def test_every_worker_killed_mid_run_the_run_completes_each_node_submitted_and_charged_once(
    killable: tuple[Container, httpx.Client, dict[str, subprocess.Popen[bytes]]],
    simulator: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    container, client, processes = killable
    made = container.users.create("survivor@example.com", "20")
    headers = {"Authorization": f"Bearer {made.api_key}"}
    assert wait_for(
        lambda: client.get("/v1/credits", headers=headers).json()["balance"] != "0.0000", 20
    )
    workflow_id = client.post("/v1/workflows", json={"name": "d"}, headers=headers).json()["id"]
    added = client.post(
        f"/v1/workflows/{workflow_id}/versions", json={"graph": DIAMOND}, headers=headers
    )
    assert added.status_code == 201, added.text
    httpx.post(f"{simulator}/_sim/faults/replicate", json={"latency_scale": 1.5})  # ~4 s upscale
    before = httpx.get(f"{simulator}/_sim/stats").json().get("replicate", {})
    run_id = client.post(
        f"/v1/workflows/{workflow_id}/runs", json={"inputs": {}}, headers=headers
    ).json()["id"]

    def run() -> dict[str, Any]:
        return dict(client.get(f"/v1/workflow-runs/{run_id}", headers=headers).json())

    def upscaling() -> bool:  # its generation has the job at the provider
        generation_id = nodes(run())["up"]["generation_id"]
        if generation_id is None:
            return False
        found = client.get(f"/v1/generations/{generation_id}", headers=headers)
        return found.status_code == 200 and found.json()["status"] == "running"

    assert wait_for(upscaling, timeout=60)
    worker = processes["worker"]
    os.killpg(worker.pid, signal.SIGKILL)  # every worker process, mid-node
    worker.wait()
    env = child_env(container.settings)  # the API's port: where inputs are fetched
    with running(dramatiq_worker("interfaces.worker"), env, tmp_path / "worker2.log"):
        assert wait_for(lambda: run()["status"] in RUN_TERMINAL, timeout=120), run()
    done = run()
    assert done["status"] == "completed", done
    after = httpx.get(f"{simulator}/_sim/stats").json()["replicate"]
    assert after["submissions"] - before.get("submissions", 0) == 2  # gen and up, once each

    def charged_once() -> bool:
        items = client.get("/v1/credits/ledger", headers=headers).json()["items"]
        return sorted(e["cause"]["id"] for e in items if e["cause"]["type"] == "workflow_node") == [
            f"{run_id}/gen",
            f"{run_id}/up",
        ]

    assert wait_for(charged_once, timeout=30)
