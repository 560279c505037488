"""The workflows projection against real Postgres: the run's folded state and document, its
deadline column, the live feed rows, the queries, and a rebuild that yields the same tables."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import pytest
from psycopg_pool import AsyncConnectionPool

from application.workflow_views import run_document
from domain.ids import uuid7
from domain.workflow import FUNDING_LIMIT, WorkflowExecution, WorkflowTemplate, fold
from interfaces.bootstrap import Container
from projections import admin, workflow_queries
from projections.workflows import FINAL_TYPES, STATUS_TYPE, decode_state, encode_state

pytestmark = pytest.mark.integration

T = TypeVar("T")
GRAPH: dict[str, Any] = {
    "inputs": {"prompt": {"type": "text"}},
    "nodes": [
        {"id": "gen", "op": "generate", "params": {"model": "flux-dev"}},
        {"id": "grey", "op": "grayscale", "inputs": {"image": "$nodes.gen"}},
        {"id": "small", "op": "resize", "params": {"width": 64}, "inputs": {"image": "$nodes.gen"}},
    ],
    "outputs": {"image": "$nodes.grey"},
}
OUTPUT = {"storage_key": "k", "width": 8, "height": 8, "media_type": "image/png", "sha256": "x"}
SOON = datetime(2100, 1, 1, tzinfo=UTC)


def later(_: str) -> datetime:
    return SOON


def query(container: Container, call: Callable[[AsyncConnectionPool], Awaitable[T]]) -> T:
    async def go() -> T:
        async with AsyncConnectionPool(container.database_url, min_size=1, open=False) as pool:
            return await call(pool)

    return asyncio.run(go())


def template(container: Container, owner: UUID, name: str = "wf") -> UUID:
    workflows = container.workflows
    wf = WorkflowTemplate.create(uuid7(), owner, name, "a test workflow")
    wf.add_version(GRAPH)
    wf.add_version(GRAPH)
    workflows.save(wf)
    return wf.id


def new_run(container: Container, user: UUID, workflow_id: UUID) -> WorkflowExecution:
    run = WorkflowExecution.request(
        run_id=uuid7(),
        user_id=user,
        workflow_id=workflow_id,
        workflow_version=1,
        graph=GRAPH,
        inputs={"prompt": "a cat"},
        quotes={"gen": 1000, "grey": 10, "small": 10},
        allow_fallback=False,
    )
    container.workflows.save(run)
    return run


def refold(container: Container, run_id: UUID) -> Any:
    state = None
    for event in container.workflows.repository.event_store.get(run_id):
        state = fold(state, event)
    return state


def row(container: Container, run_id: UUID) -> dict[str, Any]:
    with container.pool.connection() as conn:
        cur = conn.execute(
            "SELECT status, state, doc, deadline, event_version, position "
            "FROM proj_workflows.workflow_runs WHERE id = %s",
            [run_id],
        )
        found = cur.fetchone()
    assert found is not None
    names = ("status", "state", "doc", "deadline", "event_version", "position")
    return dict(zip(names, found, strict=True))


def test_a_run_is_folded_into_its_row_with_its_document_deadline_and_feed(
    container: Container,
) -> None:
    user = uuid7()
    workflow_id = template(container, user)
    run = new_run(container, user, workflow_id)
    projection = container.projection("workflows")
    projection.catch_up()
    assert row(container, run.id)["status"] == "queued"
    # waiting for its funding: due when the funding deadline passes
    assert row(container, run.id)["deadline"] == run.created_on + FUNDING_LIMIT

    soon = datetime.now(UTC) + timedelta(minutes=3)
    run.fund(uuid7(), 1020, lambda _: soon)  # gen queued, with its deadline
    run.start_node("gen", 1)
    container.workflows.save(run)
    projection.catch_up()
    found = row(container, run.id)
    assert found["status"] == "running"
    assert found["deadline"] == soon
    state = decode_state(found["state"])
    assert state.nodes["gen"]["deadline"] == soon  # datetimes come back as datetimes
    assert found["doc"] == msgspec.to_builtins(run_document(run))

    run.complete_node("gen", 1, OUTPUT, later, charged=900)
    container.workflows.save(run)
    projection.catch_up()
    assert row(container, run.id)["deadline"] == SOON  # grey and small queued
    run.complete_node("grey", 1, OUTPUT, later, cached=True)
    run.fail_node("small", 1, "too_small", "no")
    container.workflows.save(run)
    projection.catch_up()

    found = row(container, run.id)
    assert found["status"] == "failed" == run.status
    assert found["deadline"] is None
    assert found["doc"] == msgspec.to_builtins(run_document(run))
    assert found["event_version"] == run.version
    # the stored state is the fold of every event, and folds further
    stored = decode_state(found["state"])
    assert encode_state(stored) == encode_state(refold(container, run.id))
    assert vars(stored) == vars(refold(container, run.id))

    with container.pool.connection() as conn:
        feed = conn.execute(
            "SELECT position, type, data FROM proj_workflows.feed WHERE run_id = %s "
            "ORDER BY position",
            [run.id],
        ).fetchall()
    assert len(feed) == run.version  # one message per event
    assert [p for p, _, _ in feed] == sorted({p for p, _, _ in feed})
    assert feed[-1][1] == "workflow_run.failed" and feed[-1][1] in FINAL_TYPES
    assert feed[-1][2]["id"] == str(run.id)
    assert {t for _, t, _ in feed[:-1]} == {STATUS_TYPE}
    started = next(d for _, _, d in feed if d["nodes"] and d["nodes"][0]["status"] == "running")
    assert [n["id"] for n in started["nodes"]] == ["gen"]
    assert found["position"] == feed[-1][0]


def test_queries_answer_the_owner_only_and_page_newest_first(container: Container) -> None:
    alice, bob = uuid7(), uuid7()
    workflow_id = template(container, alice)
    runs = [new_run(container, alice, workflow_id) for _ in range(5)]
    late = runs[0]
    late.fund(uuid7(), 1020, lambda _: datetime.now(UTC) - timedelta(seconds=5))
    container.workflows.save(late)
    container.projection("workflows").catch_up()

    doc = query(container, lambda pool: workflow_queries.run(pool, alice, runs[1].id))
    assert doc == msgspec.to_builtins(run_document(runs[1]))
    assert query(container, lambda pool: workflow_queries.run(pool, bob, runs[1].id)) is None
    assert query(container, lambda pool: workflow_queries.run(pool, alice, uuid7())) is None

    first, cursor = query(container, lambda pool: workflow_queries.runs(pool, alice, 3, None))
    assert cursor is not None
    rest, end = query(container, lambda pool: workflow_queries.runs(pool, alice, 3, cursor))
    assert end is None
    assert [d["id"] for d in first + rest] == [str(r.id) for r in reversed(runs)]
    assert query(container, lambda pool: workflow_queries.runs(pool, bob, 3, None)) == ([], None)

    listed, _ = query(container, lambda pool: workflow_queries.workflows(pool, alice, 10, None))
    assert [w["id"] for w in listed] == [str(workflow_id)]
    assert listed[0]["latest_version"] == 2
    got = query(container, lambda pool: workflow_queries.workflow(pool, alice, workflow_id))
    assert got == listed[0]
    assert query(container, lambda pool: workflow_queries.workflow(pool, bob, workflow_id)) is None
    version = query(container, lambda pool: workflow_queries.version(pool, alice, workflow_id, 2))
    assert version is not None
    assert version["graph"] == GRAPH and version["version"] == 2
    for who, number in ((bob, 2), (alice, 3)):
        found = query(
            container,
            lambda pool, who=who, number=number: workflow_queries.version(
                pool, who, workflow_id, number
            ),
        )
        assert found is None

    assert workflow_queries.overdue_runs(container.pool, datetime.now(UTC)) == [late.id]


def test_rebuild_yields_the_same_tables(container: Container) -> None:
    user = uuid7()
    workflow_id = template(container, user)
    for i in range(3):
        run = new_run(container, user, workflow_id)
        run.fund(uuid7(), 1020, later)
        if i:
            run.complete_node("gen", 1, OUTPUT, later, charged=500)
        container.workflows.save(run)
    live = container.projection("workflows")
    live.catch_up()
    tables = {
        "workflow_runs": "id",
        "workflow_templates": "id",
        "workflow_versions": "workflow_id, version",
        "feed": "position",
    }

    def contents() -> dict[str, list[tuple[Any, ...]]]:
        with container.pool.connection() as conn:
            return {
                t: conn.execute(f"SELECT * FROM proj_workflows.{t} ORDER BY {o}").fetchall()
                for t, o in tables.items()
            }

    before = contents()
    assert len(before["workflow_runs"]) == 3
    admin.rebuild(live, container.projection("workflows", schema="proj_workflows_rebuild"))
    assert contents() == before
