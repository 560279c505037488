"""Nothing stranded, with fakes: deferral with a limit, the per-user cap, transient failures
while waiting on a submitted job, confirmed cancels, a synchronous call shown running, and
deadlines the aggregate enforces itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from application.normalise import GenerationRequest
from application.ports import Deferral
from application.providers import ProviderFailure
from application.saga import CancelAtProvider, FundGeneration, Generate, SettleGeneration
from application.saga.deadlines import Deadlines, Patience
from application.saga.provider_call import DEFER_S
from domain.billing import CreditAccount
from domain.credits import to_units
from domain.generation import Generation
from infrastructure.settings import Settings, SettingsError
from tests.unit.test_generation_reactions import (
    FakeAdapter,
    FakeBreakers,
    FakeProviders,
    Saga,
)

UNAVAILABLE = ProviderFailure("unavailable", "HTTP 503")


class Clock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)  # events are stamped with the real time

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


class FakeSlots:
    """Per-user slots in a dict (no FIFO line: the scheduler's integration test covers it)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.held: dict[UUID, UUID] = {}  # generation: user
        self.released: list[UUID] = []

    def take(self, user_id: UUID, generation_id: UUID) -> bool:
        if generation_id in self.held:
            return True
        if sum(1 for u in self.held.values() if u == user_id) >= self.cap:
            return False
        self.held[generation_id] = user_id
        return True

    def release(self, generation_id: UUID) -> None:
        if self.held.pop(generation_id, None) is not None:
            self.released.append(generation_id)


@pytest.fixture
def saga() -> Saga:
    return Saga()


def generate(saga: Saga, adapter: FakeAdapter, clock: Clock, **kwargs: Any) -> Generate:
    return Generate(
        saga.generations,
        FundGeneration(saga.generations, saga.billing),
        FakeProviders(replicate=adapter, openai=adapter),
        kwargs.pop("breakers", FakeBreakers()),
        saga.blobs,
        sleep=saga.sleeps,
        now=clock,
        **kwargs,
    )


def queued(saga: Saga, **asked: Any) -> UUID:
    gid = saga.request(**asked)
    saga.fund(gid)
    return gid


def run(saga: Saga, reaction: Any, gid: UUID) -> bool:
    return bool(reaction.handle(saga.last(gid, Generation.Queued), saga.tracking(reaction.name)))


# -- deferral ------------------------------------------------------------------------------


def test_a_deferral_says_when_it_retries_and_gives_up_after_the_limit(saga: Saga) -> None:
    clock = Clock()
    started = clock()
    asked = GenerationRequest(model="flux-schnell", prompt="a fox", allow_fallback=False)
    gid = saga.generations.request(saga.user, asked)[0].id
    saga.fund(gid)
    patience = Patience(defer_limit=timedelta(minutes=10))
    down = generate(
        saga, FakeAdapter(), clock, breakers=FakeBreakers("replicate"), patience=patience
    )
    with pytest.raises(Deferral) as first:
        run(saga, down, gid)
    generation = saga.generation(gid)
    assert (generation.status, first.value.delay_s) == ("queued", DEFER_S)
    assert generation.retry_at == started + timedelta(seconds=DEFER_S)
    assert generation.give_up_at == started + timedelta(minutes=10)

    clock.advance(minutes=5)
    with pytest.raises(Deferral) as second:
        run(saga, down, gid)
    assert second.value.delay_s == DEFER_S * 2  # backing off
    assert saga.generation(gid).give_up_at == started + timedelta(minutes=10)  # the first's

    clock.advance(minutes=5)
    assert run(saga, down, gid) is False  # past the limit: no Deferral, it ended
    generation = saga.generation(gid)
    assert (generation.status, (generation.error or {}).get("code")) == (
        "failed",
        "provider_unavailable",
    )
    settle = SettleGeneration(saga.generations, saga.billing)
    settle.handle(saga.last(gid, Generation.Failed), saga.tracking("settle"))
    assert saga.available() == to_units(10)  # nothing charged


# -- the per-user cap ------------------------------------------------------------------------


def test_at_the_cap_a_generation_waits_its_turn_without_calling_the_provider(saga: Saga) -> None:
    clock, slots, adapter = Clock(), FakeSlots(cap=1), FakeAdapter()
    first, second = queued(saga), queued(saga)
    slots.take(saga.user, first)  # the first is at the provider
    capped = generate(saga, adapter, clock, slots=slots)
    with pytest.raises(Deferral) as waiting:
        run(saga, capped, second)
    assert (waiting.value.delay_s, waiting.value.user_id) == (None, saga.user)
    generation = saga.generation(second)
    assert (generation.status, generation.retry_at, adapter.submitted) == ("queued", None, [])
    assert "at most 1" in (generation.deferred or "")

    run(saga, capped, first)  # it finishes, and gives its slot back
    assert first in slots.released
    assert run(saga, capped, second) is True  # its turn
    assert saga.generation(second).status == "processing"
    assert slots.held == {}  # it left the provider: released too


def test_a_slot_is_given_back_when_the_generation_is_deferred(saga: Saga) -> None:
    clock, slots = Clock(), FakeSlots(cap=2)
    gid = queued(saga)
    down = FakeBreakers("replicate", "fal")  # flux-schnell's and its fallbacks' providers
    with pytest.raises(Deferral):
        run(saga, generate(saga, FakeAdapter(), clock, slots=slots, breakers=down), gid)
    assert slots.held == {}
    assert gid in slots.released


# -- waiting on a submitted job ----------------------------------------------------------------


def test_transient_failures_while_waiting_retry_the_same_job(saga: Saga) -> None:
    gid = queued(saga)
    adapter = FakeAdapter(
        wait_failures=(
            UNAVAILABLE,
            ProviderFailure("rate_limited", "slow down", retry_after_s=2.0),
            ProviderFailure("timeout", "read timed out"),
        )
    )
    assert run(saga, generate(saga, adapter, Clock()), gid) is True
    assert (len(adapter.submitted), adapter.waited) == (1, ["job-1"] * 4)
    assert 2.0 in saga.sleeps.delays  # Retry-After honoured
    assert saga.generation(gid).status == "processing"


def test_a_transient_failure_past_the_deadline_fails_the_generation(saga: Saga) -> None:
    clock = Clock()
    gid = queued(saga)
    adapter = FakeAdapter(wait_failures=(UNAVAILABLE,))
    adapter.on_submit = lambda: clock.advance(hours=1)  # it waits far too long
    run(saga, generate(saga, adapter, clock), gid)
    assert (saga.generation(gid).error or {}).get("code") == "unavailable"
    assert adapter.waited == ["job-1"]


def test_a_job_that_failed_is_not_waited_on_again(saga: Saga) -> None:
    gid = queued(saga)
    adapter = FakeAdapter(wait_failures=(ProviderFailure("provider_error", "it failed"),))
    run(saga, generate(saga, adapter, Clock()), gid)
    assert (saga.generation(gid).error or {}).get("code") == "provider_error"
    assert (len(adapter.submitted), len(adapter.waited)) == (1, 1)


# -- a synchronous call ------------------------------------------------------------------------


def test_a_synchronous_call_shows_running_while_the_provider_works(saga: Saga) -> None:
    gid = queued(saga, model="imagen-3")
    openai = FakeAdapter(synchronous=True)
    seen: list[str] = []
    openai.on_submit = lambda: seen.append(saga.generation(gid).status)
    run(saga, generate(saga, openai, Clock()), gid)
    assert seen == ["running"]
    assert saga.generation(gid).status == "processing"


# -- confirmed cancel --------------------------------------------------------------------------


def submitted(saga: Saga) -> UUID:
    gid = queued(saga)
    generation = saga.generation(gid)
    generation.submitted("job-9", 1)
    saga.generations.save(generation)
    return gid


def test_a_cancel_the_provider_cannot_hear_waits_and_is_asked_again(saga: Saga) -> None:
    gid = submitted(saga)
    assert saga.generations.cancel(saga.user, gid).status == "cancelling"
    adapter = FakeAdapter(cancel_answers=(UNAVAILABLE, True))
    cancel = CancelAtProvider(saga.generations, FakeProviders(replicate=adapter))
    tracking = saga.tracking(cancel.name)
    event = saga.last(gid, Generation.CancelRequested)
    with pytest.raises(Deferral):
        cancel.handle(event, tracking)
    assert saga.generation(gid).status == "cancelling"  # not confirmed: not cancelled
    assert cancel.handle(event, tracking) is True  # parked, sent again: confirmed
    assert (saga.generation(gid).status, adapter.cancelled) == ("cancelled", ["job-9"] * 2)


def test_a_provider_that_finished_first_decides_and_the_ledger_says_so(saga: Saga) -> None:
    gid = submitted(saga)
    saga.generations.cancel(saga.user, gid)
    adapter = FakeAdapter(cancel_answers=(False,))
    CancelAtProvider(saga.generations, FakeProviders(replicate=adapter)).handle(
        saga.last(gid, Generation.CancelRequested), saga.tracking("cancel_at_provider")
    )
    assert saga.generation(gid).status == "cancelling"
    run(saga, generate(saga, adapter, Clock()), gid)  # the waiting worker gets the result
    generation = saga.generation(gid)
    assert generation.status == "processing"
    generation.complete(generation.quote)
    saga.generations.save(generation)
    SettleGeneration(saga.generations, saga.billing).handle(
        saga.last(gid, Generation.Completed), saga.tracking("settle")
    )
    account = saga.billing.load_account(saga.user)
    [captured] = [
        e for e in saga.billing.events.get(account.id) if isinstance(e, CreditAccount.HoldCaptured)
    ]
    assert captured.amount == generation.quote  # billed as delivered
    assert "after the provider had finished" in (captured.note or "")


# -- deadlines ---------------------------------------------------------------------------------


def test_the_aggregate_decides_its_deadline_and_a_late_sweep_changes_nothing(
    saga: Saga,
) -> None:
    clock = Clock()
    gid = submitted(saga)
    adapter = FakeAdapter()
    patience = Patience(margin=timedelta(seconds=30))
    deadlines = Deadlines(saga.generations, FakeProviders(replicate=adapter), patience, clock)
    generation = saga.generation(gid)
    allowance = patience.allowance(saga.generations.catalogue.get(generation.model))
    clock.at = generation.since + allowance - timedelta(seconds=1)
    assert deadlines.expire(gid) is False
    clock.advance(seconds=2)
    assert deadlines.expire(gid) is True
    generation = saga.generation(gid)
    assert (generation.status, (generation.error or {}).get("code")) == (
        "failed",
        "deadline_exceeded",
    )
    assert "running" in (generation.error or {}).get("message", "")
    assert adapter.cancelled == ["job-9"]  # the provider is told, best effort
    clock.advance(hours=1)
    assert deadlines.expire(gid) is False  # finished: nothing more


def test_a_cancelling_generation_past_its_deadline_is_cancelled(saga: Saga) -> None:
    clock = Clock()
    gid = submitted(saga)
    saga.generations.cancel(saga.user, gid)
    clock.at = saga.generation(gid).since + timedelta(days=1)
    deadlines = Deadlines(
        saga.generations, FakeProviders(replicate=FakeAdapter()), Patience(), clock
    )
    assert deadlines.expire(gid) is True
    assert saga.generation(gid).status == "cancelled"


def test_a_result_stuck_in_processing_fails_at_its_deadline_and_is_not_charged(
    saga: Saga,
) -> None:
    """An image step that keeps raising leaves it ``processing``: the deadline ends it."""
    clock = Clock()
    gid = submitted(saga)
    generation = saga.generation(gid)
    generation.produced("k", 64, 64, "image/png", 3, 10)
    saga.generations.save(generation)
    clock.at = saga.generation(gid).since + timedelta(hours=1)
    adapter = FakeAdapter()
    providers = FakeProviders(replicate=adapter)
    assert Deadlines(saga.generations, providers, Patience(), clock).expire(gid) is True
    assert (saga.generation(gid).error or {}).get("code") == "deadline_exceeded"
    assert adapter.cancelled == []  # the provider had finished its job: nothing to cancel
    SettleGeneration(saga.generations, saga.billing).handle(
        saga.last(gid, Generation.Failed), saga.tracking("settle")
    )
    assert saga.available() == to_units(10)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PIXEVO_USER_CONCURRENCY", "0"),
        ("PIXEVO_DEFER_LIMIT_S", "soon"),
        ("PIXEVO_DEADLINE_MARGIN_S", "-1"),
    ],
)
def test_bad_patience_settings_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_patience_settings_reach_child_processes() -> None:
    settings = Settings.from_env({"PIXEVO_USER_CONCURRENCY": "3", "PIXEVO_DEFER_LIMIT_S": "90"})
    again = Settings.from_env(settings.as_env())
    assert (again.user_concurrency, again.defer_limit_s, again.deadline_margin_s) == (3, 90, 60)
