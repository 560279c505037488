"""The workflow engine without I/O: graph validation, planning and the run's state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import Tracking

from application.billing import BillingApplication
from application.generations import GenerationNotFound, GenerationsApplication
from application.workflow_graph import MAX_DEPTH, InvalidGraph, run_values, validate_shape
from application.workflow_reactions import FundRun, StartProviderNode
from application.workflows import WorkflowsApplication
from domain.credits import Cause, hold_id_for, to_units
from domain.workflow import (
    FUNDING_LIMIT,
    RunFinished,
    WorkflowExecution,
    fold,
    next_deadline,
    run_cause,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def soon(_: str) -> datetime:
    return NOW + timedelta(minutes=5)


def node(id_: str, op: str, params: dict[str, Any] | None = None, **inputs: str) -> dict[str, Any]:
    return {"id": id_, "op": op, "params": params or {}, "inputs": inputs}


GEN = node(
    "gen", "generate", {"model": "sim-instant", "prompt": "a cat", "width": 256, "height": 256}
)
DIAMOND = {
    "nodes": [
        GEN,
        node("up", "upscale", {"model": "real-esrgan", "scale": 2}, image="$nodes.gen"),
        node("gray", "grayscale", image="$nodes.gen"),
        node("comp", "composite", {"x": 0, "y": 0}, base="$nodes.up", overlay="$nodes.gray"),
    ],
    "outputs": {"out": "$nodes.comp"},
}


@pytest.fixture
def workflows() -> WorkflowsApplication:
    return WorkflowsApplication(generations=GenerationsApplication())


def fields(graph: Any, workflows: WorkflowsApplication | None = None) -> set[str]:
    problems = validate_shape(graph)
    if not problems and workflows is not None:
        try:
            workflows.plan(graph, {}, {})
        except InvalidGraph as invalid:
            problems = invalid.problems
    return {field for field, _ in problems}


def test_a_valid_diamond_is_planned_with_each_nodes_size_and_quote(
    workflows: WorkflowsApplication,
) -> None:
    assert validate_shape(DIAMOND) == []
    plans = workflows.plan(DIAMOND, {}, {})
    assert plans["gen"].size == (256, 256)
    assert plans["up"].size == (512, 512) == plans["comp"].size
    assert plans["gray"].quote == 0 < plans["up"].quote < plans["gen"].quote


def test_every_problem_of_a_graph_is_named_by_node_and_port(
    workflows: WorkflowsApplication,
) -> None:
    graph = {
        "inputs": {"n": {"type": "integer"}, "t": {"type": "text"}},
        "nodes": [
            node("a", "sharpen"),
            node("b", "grayscale"),  # its image is unbound
            node("c", "grayscale", image="$inputs.n"),  # an integer is no image
            node("d", "grayscale", image="$nodes.nowhere"),
            node("e", "resize", {"width": 10}, image="$inputs.ghost", colour="$inputs.t"),
        ],
        "outputs": {"x": "$nodes.zz"},
    }
    assert fields(graph) == {
        "nodes.a.op",
        "nodes.b.inputs.image",
        "nodes.c.inputs.image",
        "nodes.d.inputs.image",
        "nodes.e.inputs.image",
        "nodes.e.inputs.colour",
        "outputs.x",
    }


def test_a_cycle_names_the_nodes_on_it() -> None:
    graph = {
        "nodes": [
            node("a", "grayscale", image="$nodes.c"),
            node("b", "grayscale", image="$nodes.a"),
            node("c", "grayscale", image="$nodes.b"),
        ]
    }
    assert fields(graph) == {"nodes.a.inputs", "nodes.b.inputs", "nodes.c.inputs"}


def test_models_of_the_wrong_kind_and_refused_params_are_named(
    workflows: WorkflowsApplication,
) -> None:
    wrong_kind = {
        "nodes": [GEN, node("u", "upscale", {"model": "sim-instant"}, image="$nodes.gen")]
    }
    assert fields(wrong_kind, workflows) == {"nodes.u.params.model"}
    unknown = {"nodes": [node("g", "generate", {"model": "no-such", "prompt": "x"})]}
    assert fields(unknown, workflows) == {"nodes.g.params.model"}
    too_many_steps = {
        "nodes": [
            node(
                "g", "generate", {"model": "sim-instant", "prompt": "x", "steps": 1000, "colour": 1}
            )
        ]
    }
    assert fields(too_many_steps, workflows) == {"nodes.g.params.colour"}
    bad_crop = {
        "nodes": [
            GEN,
            node("c", "crop", {"x": 0, "y": 0, "width": 999, "height": 10}, image="$nodes.gen"),
        ]
    }
    assert fields(bad_crop, workflows) == {"nodes.c.params.width"}


def test_a_graph_is_bounded() -> None:
    chain = [node("n0", "grayscale", image="$inputs.i")]
    chain += [node(f"n{i}", "grayscale", image=f"$nodes.n{i - 1}") for i in range(1, MAX_DEPTH + 1)]
    deep = {"inputs": {"i": {"type": "image"}}, "nodes": chain}
    assert fields(deep) == {"nodes"}
    wide = {"nodes": [node(f"n{i}", "grayscale", image="$inputs.i") for i in range(201)]}
    assert fields(wide) == {"nodes"}


def run_of(graph: dict[str, Any], quotes: dict[str, int]) -> WorkflowExecution:
    return WorkflowExecution.request(
        run_id=uuid4(),
        user_id=uuid4(),
        workflow_id=uuid4(),
        workflow_version=1,
        graph=graph,
        inputs={},
        quotes=quotes,
        allow_fallback=True,
    )


def statuses(run: WorkflowExecution) -> dict[str, str]:
    return {n: s["status"] for n, s in run.nodes.items()}


OUTPUT = {"storage_key": "k", "width": 1, "height": 1, "media_type": "image/png", "sha256": "0"}


def test_a_failure_skips_downstream_the_other_branch_finishes_and_a_retry_funds_a_new_round() -> (
    None
):
    run = run_of(DIAMOND, {"gen": 100, "up": 50, "gray": 0, "comp": 0})
    assert run.pending_quote() == 150
    run.fund(None, 150, soon)
    assert statuses(run)["gen"] == "queued" and run.status == "running"
    run.complete_node("gen", 1, OUTPUT, soon, charged=999)  # never above its quote
    assert statuses(run) == {
        "gen": "completed",
        "up": "queued",
        "gray": "queued",
        "comp": "pending",
    }
    assert run.nodes["gen"]["charged"] == 100
    assert run.complete_node("gen", 1, OUTPUT, soon) is False  # delivered twice: nothing
    run.fail_node("up", 1, "provider_error", "boom")
    assert statuses(run)["comp"] == "skipped" and run.status == "running"  # gray still runs
    run.complete_node("gray", 1, OUTPUT, soon)
    assert run.status == "failed" and run.charges(1) == {"gen": 100}
    with pytest.raises(RunFinished):
        run.retry("gen", soon)  # completed: nothing to retry
    funding_round, amount = run.retry("comp", soon)  # a skipped node re-runs what it waits on
    assert (funding_round, amount) == (2, 50)
    assert run.status == "queued" and statuses(run)["up"] == "pending"
    run.fund(None, 50, soon)
    assert run.nodes["up"]["attempts"] == 2 and statuses(run)["up"] == "queued"
    run.complete_node("up", 2, OUTPUT, soon, charged=40)
    run.complete_node("comp", 1, OUTPUT, soon)
    assert run.status == "completed" and run.outputs == {"out": OUTPUT}
    assert run.charges(2) == {"up": 40} and run.charges(1) == {"gen": 100}
    # the read side's fold of the same events tells the same story
    state: Any = None
    for event in run.collect_events():
        state = fold(state, event)
    assert state.nodes == run.nodes and state.status == run.status


def test_a_cancel_stops_pending_nodes_at_once_and_waits_for_running_ones() -> None:
    run = run_of(DIAMOND, {"gen": 100, "up": 50, "gray": 0, "comp": 0})
    run.fund(None, 150, soon)
    assert run.request_cancel() == ["gen"]  # at its provider: it must be asked
    assert run.status == "cancelling"
    assert statuses(run) == {
        "gen": "queued",
        "up": "cancelled",
        "gray": "cancelled",
        "comp": "cancelled",
    }
    run.complete_node("gen", 1, OUTPUT, soon, charged=100)  # it had finished: billed as delivered
    assert run.status == "cancelled" and run.charges(1) == {"gen": 100}
    with pytest.raises(RunFinished):
        run.request_cancel()
    unfunded = run_of(DIAMOND, {"gen": 100, "up": 50, "gray": 0, "comp": 0})
    unfunded.request_cancel()
    assert unfunded.status == "cancelled"
    unfunded.fund(None, 150, soon)  # a late funding changes nothing
    assert unfunded.status == "cancelled"


def test_a_node_past_its_deadline_is_overdue() -> None:
    run = run_of(DIAMOND, {"gen": 100, "up": 50, "gray": 0, "comp": 0})
    run.fund(None, 150, soon)
    assert run.overdue(NOW) == []
    assert run.overdue(NOW + timedelta(minutes=6)) == ["gen"]


def test_a_refused_funding_fails_the_run_with_nothing_run() -> None:
    run = run_of(DIAMOND, {"gen": 100, "up": 50, "gray": 0, "comp": 0})
    run.refuse_funding("insufficient_credits", "requested 150, 0 available")
    assert run.status == "failed" and run.error is not None
    assert set(statuses(run).values()) == {"cancelled"}


def test_a_run_never_funded_and_a_node_never_finished_both_end_at_their_deadlines() -> None:
    run = run_of(DIAMOND, {"gen": 100, "up": 50, "gray": 0, "comp": 0})
    due = next_deadline(run)
    assert due == run.created_on + FUNDING_LIMIT
    assert run.expire(due - timedelta(seconds=1)) == [] and run.status == "queued"
    run.expire(due)
    assert run.status == "failed" and run.error == {
        "code": "funding_timeout",
        "message": "its credits could not be held in time",
    }
    funded = run_of(DIAMOND, {"gen": 100, "up": 50, "gray": 0, "comp": 0})
    funded.fund(None, 150, soon)
    assert next_deadline(funded) == soon("gen")
    assert funded.expire(soon("gen")) == ["gen"]  # a provider node: its generation to cancel
    assert funded.nodes["gen"]["error"]["code"] == "timeout"
    assert funded.status == "failed" and statuses(funded)["up"] == "skipped"


def test_a_run_is_held_once_and_a_retry_within_its_running_round_keeps_the_hold() -> None:
    generations = GenerationsApplication()
    workflows = WorkflowsApplication(generations=generations)
    billing = BillingApplication()
    user = uuid4()
    billing.deposit(user, "grant", to_units("10"), Cause("admin_grant", "g1"))
    made = workflows.create_workflow(user, "w")
    workflows.add_version(user, UUID(made["id"]), DIAMOND)
    doc, _ = workflows.start_run(user, UUID(made["id"]), None, {})
    run_id = UUID(doc["id"])
    quoted = sum(workflows.run(None, run_id).quotes.values())
    fund = FundRun(workflows, billing)
    requested = next(iter(workflows.events.get(run_id)))
    first = Tracking("workflows->fund_workflow_run", 1)
    assert fund.handle(requested, first) is True
    assert fund.handle(requested, first) is False  # delivered twice: held once
    hold = str(hold_id_for(run_cause(run_id, 1)))
    assert billing.load_account(user).holds[hold]["amount"] == quoted
    workflows.change(run_id, lambda r: r.complete_node("gen", 1, OUTPUT, soon, charged=10))
    workflows.change(run_id, lambda r: r.fail_node("up", 1, "provider_error", "down"))
    assert workflows.run(None, run_id).status == "running"  # gray is still to finish
    workflows.retry(user, run_id, "up")  # within the running round: its hold covers it
    retried = [e for e in workflows.events.get(run_id) if isinstance(e, WorkflowExecution.Retried)]
    assert (retried[0].funding_round, retried[0].amount) == (1, 0)
    fund.handle(retried[0], Tracking("workflows->fund_workflow_run", 2))
    assert billing.load_account(user).holds[hold]["amount"] == quoted  # still held


def test_a_provider_node_cancelled_before_its_generation_is_made_never_makes_one() -> None:
    generations = GenerationsApplication()
    workflows = WorkflowsApplication(generations=generations)
    user = uuid4()
    made = workflows.create_workflow(user, "w")
    workflows.add_version(user, UUID(made["id"]), DIAMOND)
    doc, _ = workflows.start_run(user, UUID(made["id"]), None, {})
    run_id = UUID(doc["id"])
    workflows.change(run_id, lambda r: r.fund(None, 0, soon))
    queued = [e for e in workflows.events.get(run_id) if type(e) is WorkflowExecution.NodeQueued]
    workflows.cancel(user, run_id)  # "gen" is queued: the run waits for it
    assert workflows.run(None, run_id).status == "cancelling"
    start = StartProviderNode(workflows, generations)
    start.handle(queued[0], Tracking("workflows->start_workflow_node", 3))
    run = workflows.run(None, run_id)
    assert run.status == "cancelled" and run.nodes["gen"]["status"] == "cancelled"
    assert queued[0].generation_id is not None
    with pytest.raises(GenerationNotFound):
        generations.generation(None, queued[0].generation_id)


def test_a_nul_anywhere_in_a_graph_or_its_inputs_is_refused_before_it_is_stored() -> None:
    """PostgreSQL's text and jsonb cannot hold NUL: stored, it would stop every projection."""
    graph = {
        "inputs": {"prompt": {"type": "text", "default": "a\x00b"}},
        "nodes": [{"id": "g", "op": "grayscale", "inputs": {"image": "$inputs.prompt"}}],
        "outputs": {"out": "$nodes.g"},
    }
    assert validate_shape(graph) == [("inputs.prompt.default", "may not contain NUL characters")]
    clean = {**graph, "inputs": {"prompt": {"type": "text"}}}
    with pytest.raises(InvalidGraph) as refused:
        run_values(clean, {"prompt": "x\x00"})
    assert refused.value.problems == [("inputs.prompt", "may not contain NUL characters")]
