"""How a run, a node and a workflow look to a client (the API's JSON), made in one place.

A run's document is made from its state as :func:`domain.workflow.fold` (or the aggregate)
has it, so the read model, the write-side fallback right after a create and ``?at=N`` all
answer the same shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from domain.credits import format_credits
from domain.workflow import RUN_TERMINAL


def run_url(run_id: UUID | str) -> str:
    return f"/v1/workflow-runs/{run_id}"


def run_events_url(run_id: UUID | str) -> str:
    return f"/v1/workflow-runs/{run_id}/events"


def node_output_url(run_id: UUID | str, node: str) -> str:
    return f"/v1/workflow-runs/{run_id}/nodes/{node}/output"


def _time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def output_view(run_id: UUID | str, node: str, output: dict[str, Any] | None) -> Any:
    if output is None:
        return None
    return {
        "url": node_output_url(run_id, node),
        "width": output.get("width"),
        "height": output.get("height"),
        "format": str(output.get("media_type", "")).split("/")[-1] or None,
        "media_type": output.get("media_type"),
        "sha256": output.get("sha256"),
        "bytes": output.get("bytes"),
    }


def progress(run: Any, live: dict[str, float] | None = None) -> float:
    """How far the run is, 0..100: each node counts equally; a running node counts for its
    ``live`` progress (0..1) when known. Ended runs are 100."""
    if run.status in RUN_TERMINAL:
        return 100.0
    nodes = run.nodes
    done = 0.0
    for node, state in nodes.items():
        if state["status"] in ("completed", "skipped", "cancelled", "failed"):
            done += 1
        elif state["status"] == "running" and live:
            done += max(0.0, min(0.99, live.get(node, 0.0)))
    return round(100 * done / max(1, len(nodes)), 1)


def node_view(run: Any, node: str) -> dict[str, Any]:
    state = run.nodes[node]
    run_id = run.id
    generation_id = state["generation_id"]
    if state["output"] and state["output"].get("generation_id"):
        generation_id = state["output"]["generation_id"]
    return {
        "id": node,
        "op": state["op"],
        "status": state["status"],
        "attempts": state["attempts"],
        "generation_id": str(generation_id) if generation_id else None,
        "output": output_view(run_id, node, state["output"]),
        "cached": bool(state["cached"]),
        "reused_from": str(state["reused_from"]) if state.get("reused_from") else None,
        "fallback_from": state["fallback_from"],
        "error": state["error"],
        "cost_credits": format_credits(run.quotes.get(node, 0)),
        "charged_credits": format_credits(
            state["charged"] if state["status"] == "completed" else 0
        ),
        "started_at": _time(state["started_at"]),
        "completed_at": _time(state["completed_at"]),
    }


def run_document(run: Any) -> dict[str, Any]:
    """The run as ``GET /v1/workflow-runs/{id}`` answers it."""
    outputs = None
    if run.outputs is not None:
        graph_outputs = run.graph.get("outputs", {})
        outputs = {
            name: output_view(run.id, binding.split(".", 1)[1], run.outputs.get(name))
            for name, binding in graph_outputs.items()
        }
    charged = sum(s["charged"] for s in run.nodes.values() if s["status"] == "completed")
    return {
        "id": str(run.id),
        "workflow_id": str(run.workflow_id),
        "version": run.workflow_version,
        "status": run.status,
        "inputs": {
            name: value.get("reference") if isinstance(value, dict) else value
            for name, value in run.inputs.items()
        },
        "cost_credits": format_credits(sum(run.quotes.values())),
        "charged_credits": format_credits(charged),
        "progress": progress(run),
        # in the graph's order (a stored state's keys may come back in another)
        "nodes": [node_view(run, node["id"]) for node in run.graph["nodes"]],
        "outputs": outputs,
        "error": run.error,
        "forked_from": run.forked_from,
        "cancel_requested": run.cancel_requested,
        "created_at": _time(run.created_on),
        "completed_at": _time(run.completed_at),
        "links": {"self": run_url(run.id), "events": run_events_url(run.id)},
    }


def template_document(template: Any) -> dict[str, Any]:
    return {
        "id": str(template.id),
        "name": template.name,
        "description": template.description,
        "owner_id": str(template.owner_id),
        "latest_version": template.latest_version,
        "source": template.source,
        "created_at": _time(template.created_on),
    }


def version_document(
    workflow_id: UUID | str, version: int, entry: dict[str, Any]
) -> dict[str, Any]:
    return {
        "workflow_id": str(workflow_id),
        "version": version,
        "graph": entry["graph"],
        "created_at": _time(entry["created_at"]),
    }
