"""Parked messages, per-user slots and the deadline sweep on real PostgreSQL (the scheduler's
rounds are run by hand; enqueuing is recorded instead of sent)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import Tracking

from application.normalise import GenerationRequest
from application.ports import Deferral
from application.saga import FundGeneration
from application.saga.deadlines import Deadlines, Patience
from domain.credits import Cause, to_units
from domain.generation import Generation
from infrastructure.parking import Parking, ProviderSlots
from infrastructure.scheduler import Scheduler
from interfaces.bootstrap import Container
from projections import generation_queries

pytestmark = pytest.mark.integration


class Sent(list[tuple[str, str, int]]):
    def __call__(self, reaction: str, upstream: str, notification_id: int) -> None:
        self.append((reaction, upstream, notification_id))


def scheduler(container: Container, slots: ProviderSlots, sent: Sent) -> Scheduler:
    return Scheduler(container.database_url, Parking(container.pool), slots, sent)


def test_a_deferred_message_is_sent_again_when_due_and_forgotten(container: Container) -> None:
    sent = Sent()
    parking = Parking(container.pool)
    rounds = scheduler(container, ProviderSlots(container.pool, 8), sent)
    parking.park("generate", "generations", 7, Deferral("down", 0.0, generation_id=uuid4()))
    parking.park("generate", "generations", 8, Deferral("down", 600.0))
    assert rounds.resume_due() == 1
    assert sent == [("generate", "generations", 7)]
    assert rounds.resume_due() == 0  # sent once, then forgotten; the other is not due
    parking.park("generate", "generations", 7, Deferral("down again", 0.0))  # parked anew
    assert rounds.resume_due() == 1


def test_capped_generations_are_admitted_in_order_as_slots_free(container: Container) -> None:
    sent = Sent()
    slots = ProviderSlots(container.pool, 2)
    parking = Parking(container.pool)
    rounds = scheduler(container, slots, sent)
    user, other = uuid4(), uuid4()
    running = [uuid4(), uuid4()]
    assert all(slots.take(user, g) for g in running)
    assert slots.take(user, running[0])  # a redelivered message keeps its slot
    waiting = {30: uuid4(), 10: uuid4(), 20: uuid4()}  # by their Queued event's position
    for position, gid in waiting.items():
        assert not slots.take(user, gid)
        why = Deferral("capped", None, generation_id=gid, user_id=user)
        parking.park("generate", "generations", position, why)
    assert slots.take(other, uuid4())  # another user is not held up
    assert rounds.admit() == 0  # no free slot
    slots.release(running[0])
    assert not slots.take(user, uuid4())  # a newcomer waits behind the line
    assert rounds.admit() == 1
    assert sent == [("generate", "generations", 10)]  # the oldest first
    assert slots.take(user, waiting[10])  # its slot was reserved for it
    slots.release(running[1])
    slots.release(waiting[10])
    assert rounds.admit() == 2
    assert [n for _, _, n in sent] == [10, 20, 30]
    assert {waiting[20], waiting[30]} <= set(slots.held())


def queued_generation(container: Container) -> UUID:
    user = container.users.create(f"{uuid4().hex[:8]}@example.com").user_id
    container.billing.deposit(user, "grant", to_units(5), Cause("test", str(user)))
    asked = GenerationRequest(model="sim-instant", prompt="lost", params={"seed": 1})
    gid = container.generations.request(user, asked)[0].id
    requested = next(iter(container.generations.events.get(gid)))
    fund = FundGeneration(container.generations, container.billing)
    fund.handle(requested, Tracking("generations->fund_generation", 1))
    return gid


def test_the_sweep_fails_a_generation_whose_message_was_lost(container: Container) -> None:
    gid = queued_generation(container)  # funded and queued; nobody will ever run it
    projection = container.projection("generations")
    projection.catch_up()
    now = datetime.now(UTC)
    assert gid not in generation_queries.overdue(container.pool, now)
    later = now + timedelta(hours=1)
    assert gid in generation_queries.overdue(container.pool, later)
    deadlines = Deadlines(container.generations, container.providers, Patience(), lambda: later)
    assert deadlines.expire(gid) is True
    generation = container.generations.generation(None, gid)
    assert (generation.status, (generation.error or {})["code"]) == ("failed", "deadline_exceeded")
    assert "queued" in (generation.error or {})["message"]
    projection.catch_up()
    assert gid not in generation_queries.overdue(container.pool, later)  # finished: no deadline
    assert isinstance(list(container.generations.events.get(gid))[-1], Generation.Failed)


def test_the_sweep_fails_a_workflow_node_past_its_deadline_and_the_run_moves_on(
    container: Container,
) -> None:
    user = container.users.create("sweep@example.com", "10").user_id
    workflows = container.workflows
    workflow = workflows.create_workflow(user, "late")
    graph = {
        "nodes": [
            {"id": "gen", "op": "generate", "params": {"model": "sim-instant", "prompt": "x"}},
            {"id": "gray", "op": "grayscale", "inputs": {"image": "$nodes.gen"}},
        ]
    }
    workflows.add_version(user, UUID(workflow["id"]), graph)
    run, _ = workflows.start_run(user, UUID(workflow["id"]), None, {})
    run_id = UUID(run["id"])
    past = datetime.now(UTC) - timedelta(seconds=1)  # its node queued long ago; nobody ran it
    workflows.change(run_id, lambda r: r.fund(None, 0, lambda _: past))
    container.projection("workflows").catch_up()
    assert container.sweep() >= 1
    ended = workflows.run(None, run_id)
    assert ended.status == "failed"
    assert ended.nodes["gen"]["error"]["code"] == "timeout"
    assert ended.nodes["gray"]["status"] == "skipped"
    container.projection("workflows").catch_up()
    assert container.sweep() == 0  # ended: nothing left to sweep
