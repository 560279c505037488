"""The generation reactions with hand-written fakes of their ports: no database, no Redis, no
HTTP. Fund, generate (retries, Retry-After, circuit breaker, fallback, deferral), cancel and
settle, each delivered twice where redelivery matters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.billing import BillingApplication
from application.catalogue import ModelSpec
from application.generations import GenerationsApplication
from application.moderation import ModerationPolicy
from application.normalise import GenerationRequest, Normalised
from application.ports import CircuitOpen, Deferral
from application.providers import Output, ProgressSink, ProviderFailure, Submitted
from application.saga import CancelAtProvider, FundGeneration, Generate, SettleGeneration
from application.saga.provider_call import DEFER_S
from domain.credits import Cause, hold_id_for, to_units
from domain.generation import STATUS_AFTER, Generation
from tests.support.fakes import MemoryBlobs

POPO = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
PNG = b"\x89PNG fake"


# -- fakes of the ports ----------------------------------------------------------------------


class FakeAdapter:
    """A provider: answers each ``submit`` with the next scripted failure, then a job."""

    def __init__(
        self,
        *failures: ProviderFailure,
        synchronous: bool = False,
        wait_failures: tuple[ProviderFailure, ...] = (),
        cancel_answers: tuple[bool | ProviderFailure, ...] = (),
    ) -> None:
        self.failures = list(failures)
        self.synchronous = synchronous
        self.wait_failures = list(wait_failures)
        self.cancel_answers = list(cancel_answers)
        self.submitted: list[Normalised] = []
        self.cancelled: list[str] = []
        self.waited: list[str] = []
        self.on_submit: Any = None  # called with each submission, before it answers

    def submit(self, model: ModelSpec, request: Normalised) -> Submitted:
        self.submitted.append(request)
        if self.on_submit is not None:
            self.on_submit()
        if self.failures:
            raise self.failures.pop(0)
        output = Output("https://provider/result.png", None, 64, 64, "image/png")
        if self.synchronous:
            return Submitted(None, output)
        return Submitted(f"job-{len(self.submitted)}")

    def wait(
        self, model: ModelSpec, job_id: str, on_progress: ProgressSink | None = None
    ) -> Output:
        self.waited.append(job_id)
        if self.wait_failures:
            raise self.wait_failures.pop(0)
        return Output("https://provider/result.png", None, 64, 64, "image/png")

    def cancel(self, model: ModelSpec, job_id: str) -> bool:
        self.cancelled.append(job_id)
        answer = self.cancel_answers.pop(0) if self.cancel_answers else True
        if isinstance(answer, ProviderFailure):
            raise answer
        return answer

    def fetch(self, output: Output) -> bytes:
        return PNG


class FakeProviders:
    def __init__(self, **adapters: FakeAdapter) -> None:
        self.adapters = adapters

    def for_model(self, model: ModelSpec) -> FakeAdapter:
        return self.adapters[model.provider]


class FakeBreakers:
    def __init__(self, *open_providers: str) -> None:
        self.open = set(open_providers)
        self.guarded: list[str] = []

    def is_open(self, provider: str) -> bool:
        return provider in self.open

    @contextmanager
    def guard(self, provider: str) -> Iterator[None]:
        self.guarded.append(provider)
        if self.is_open(provider):
            raise CircuitOpen(provider)
        yield


class FalRecovers(FakeBreakers):
    """fal's breaker is open until replicate has been called once."""

    def is_open(self, provider: str) -> bool:
        return provider == "fal" and "replicate" not in self.guarded


class FakeCache:
    def __init__(self, hit: tuple[UUID, dict[str, Any]] | None = None) -> None:
        self.hit, self.asked = hit, 0

    def find(self, fingerprint: str) -> tuple[UUID, dict[str, Any]] | None:
        self.asked += 1
        return self.hit


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, delay: float) -> None:
        self.delays.append(delay)


# -- the platform in memory ------------------------------------------------------------------


class Saga:
    def __init__(self, moderation: ModerationPolicy | None = None) -> None:
        self.generations = GenerationsApplication(env=POPO, moderation=moderation)
        self.billing = BillingApplication(env=POPO)
        self.user = uuid4()
        self.billing.deposit(self.user, "grant", to_units(10), Cause("signup", str(self.user)))
        self.sleeps = Sleeps()
        self.blobs = MemoryBlobs()
        self._delivered = 0

    def request(self, model: str = "flux-schnell", **params: Any) -> UUID:
        asked = GenerationRequest(model=model, prompt="a fox", params={"seed": 7, **params})
        return self.generations.request(self.user, asked)[0].id

    def generation(self, generation_id: UUID) -> Generation:
        return self.generations.generation(None, generation_id)

    def last(self, generation_id: UUID, kind: type[Any]) -> DomainEventProtocol[UUID]:
        events = list(self.generations.events.get(generation_id))
        return next(e for e in reversed(events) if isinstance(e, kind))

    def tracking(self, reaction: str) -> Tracking:
        self._delivered += 1
        return Tracking(f"generations->{reaction}", self._delivered)

    def deliver(self, reaction: Any, event: DomainEventProtocol[UUID]) -> tuple[bool, bool]:
        """Delivers ``event`` twice with one tracking record: (first, second) answers."""
        tracking = self.tracking(reaction.name)
        return reaction.handle(event, tracking), reaction.handle(event, tracking)

    def fund(self, generation_id: UUID, cache: FakeCache | None = None) -> None:
        fund = FundGeneration(self.generations, self.billing, cache)
        fund.handle(self.last(generation_id, Generation.Requested), self.tracking(fund.name))

    def generate(self, providers: FakeProviders, breakers: FakeBreakers | None = None) -> Generate:
        return Generate(
            self.generations,
            FundGeneration(self.generations, self.billing),
            providers,
            breakers or FakeBreakers(),
            self.blobs,
            sleep=self.sleeps,
        )

    def available(self) -> int:
        return self.billing.position(self.user).available


@pytest.fixture
def saga() -> Saga:
    return Saga()


# -- fund ------------------------------------------------------------------------------------


def test_funding_holds_the_quote_for_the_generations_cause_once(saga: Saga) -> None:
    gid = saga.request()
    quote = saga.generation(gid).quote
    fund = FundGeneration(saga.generations, saga.billing)
    assert saga.deliver(fund, saga.last(gid, Generation.Requested)) == (True, False)
    generation = saga.generation(gid)
    assert generation.status == "queued"
    assert generation.hold_id == hold_id_for(Cause("generation", str(gid)))
    assert saga.available() == to_units(10) - quote


def test_a_generation_with_another_cause_holds_for_that_cause(saga: Saga) -> None:
    cause = Cause("workflow_node", f"{uuid4()}:upscale")
    asked = GenerationRequest(model="flux-schnell", prompt="a fox")
    gid = saga.generations.request(saga.user, asked, cause=cause)[0].id
    saga.fund(gid)
    assert saga.generation(gid).hold_id == hold_id_for(cause)
    assert str(hold_id_for(cause)) in saga.billing.load_account(saga.user).holds


def test_funding_without_enough_credits_fails_and_holds_nothing(saga: Saga) -> None:
    saga.billing.place_hold(saga.user, to_units(10) - 1, Cause("elsewhere", "x"))
    gid = saga.request()
    saga.fund(gid)
    generation = saga.generation(gid)
    assert (generation.status, (generation.error or {}).get("code")) == (
        "failed",
        "insufficient_credits",
    )
    assert saga.available() == 1


def test_an_identical_seeded_request_is_served_from_the_cache(saga: Saga) -> None:
    source = uuid4()
    stored = {"storage_key": "k", "width": 64, "height": 64, "content_type": "image/png"}
    gid = saga.request()
    saga.fund(gid, FakeCache((source, {**stored, "bytes": 3})))
    generation = saga.generation(gid)
    assert (generation.status, generation.from_cache) == ("completed", source)
    assert generation.charged == to_units(
        saga.generations.catalogue.get("flux-schnell").pricing.cache_credits
    )


def test_a_request_without_a_seed_never_asks_the_cache(saga: Saga) -> None:
    asked = GenerationRequest(model="flux-schnell", prompt="a fox")
    gid = saga.generations.request(saga.user, asked)[0].id
    cache = FakeCache((uuid4(), {}))
    saga.fund(gid, cache)
    assert (cache.asked, saga.generation(gid).status) == (0, "queued")


def test_every_event_leads_to_the_status_the_read_models_are_told(saga: Saga) -> None:
    """``STATUS_AFTER`` (what projections use) agrees with the aggregate's own ``apply``."""
    first, second, third, fourth = (saga.generation(saga.request()) for _ in range(4))
    first.fund(uuid4())
    first.queue()
    first.submitted("j", 1)
    first.produced("k", 1, 1, "image/png", 1, 1)
    first.process([], "h", 0.5, 0.1, "c")
    first.complete(1)
    first.block("rescreen", "r", "v", score=0.9)
    first.reinstate("v2", 0.1)
    second.request_cancel()
    third.fund(uuid4())
    third.fail("x", "y")
    fourth.fund(uuid4())
    fourth.queue()
    fourth.submitted(None, 1)  # a synchronous call, started
    now = datetime.now(UTC)
    fourth.defer("down", now=now, retry_at=now, give_up_at=now + timedelta(hours=1))
    fourth.submitted("j", 1)
    fourth.request_cancel()  # the provider has it: cancelling
    seen = set()
    for generation in (first, second, third, fourth):
        replayed: Any = saga.generation(generation.id)  # as stored: Requested only
        for event in generation.collect_events():
            replayed = event.mutate(replayed)
            if type(event) in STATUS_AFTER:
                assert replayed.status == STATUS_AFTER[type(event)], type(event).__name__
                seen.add(type(event))
    assert seen == set(STATUS_AFTER) - {Generation.Requested}


# -- generate --------------------------------------------------------------------------------


def test_generate_sends_the_recorded_request_and_records_job_then_result(saga: Saga) -> None:
    gid = saga.request(aspect_ratio="16:9")
    saga.fund(gid)
    adapter = FakeAdapter()
    generate = saga.generate(FakeProviders(replicate=adapter))
    assert saga.deliver(generate, saga.last(gid, Generation.Queued)) == (True, False)
    generation = saga.generation(gid)
    sent = adapter.submitted[0]
    assert (sent.model, sent.params, sent.cost_units) == (
        "flux-schnell",
        {"width": 1376, "height": 768, "seed": 7},  # 16:9 at about a megapixel, in 32s
        3000,
    )
    assert (generation.status, generation.job_id) == ("processing", "job-1")
    assert adapter.waited == ["job-1"]
    assert saga.blobs.data[(generation.result or {})["storage_key"]] == PNG
    assert len(adapter.submitted) == 1  # the second delivery submitted nothing


def test_one_message_funds_submits_and_records_the_result(saga: Saga) -> None:
    """No hop between funding and submitting: the ``Requested`` event's message does both,
    and its tracking record is written with the result, once."""
    gid = saga.request()
    quote = saga.generation(gid).quote
    adapter = FakeAdapter()
    generate = saga.generate(FakeProviders(replicate=adapter))
    assert saga.deliver(generate, saga.last(gid, Generation.Requested)) == (True, False)
    generation = saga.generation(gid)
    assert (generation.status, generation.job_id) == ("processing", "job-1")
    assert generation.hold_id == hold_id_for(Cause("generation", str(gid)))
    assert saga.available() == to_units(10) - quote
    assert len(adapter.submitted) == 1
    kinds = [type(e).__name__ for e in saga.generations.events.get(gid)]
    assert kinds == ["Requested", "Funded", "Queued", "Submitted", "Produced"]


def test_funding_that_ends_the_generation_submits_nothing(saga: Saga) -> None:
    saga.billing.place_hold(saga.user, to_units(10) - 1, Cause("elsewhere", "x"))
    gid = saga.request()
    adapter = FakeAdapter()
    generate = saga.generate(FakeProviders(replicate=adapter))
    assert saga.deliver(generate, saga.last(gid, Generation.Requested)) == (True, False)
    assert (saga.generation(gid).status, adapter.submitted) == ("failed", [])


def test_a_redelivered_message_resumes_the_recorded_job_without_submitting(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    generation = saga.generation(gid)
    generation.submitted("job-earlier", 1)  # a worker recorded it, then died waiting
    saga.generations.save(generation)
    adapter = FakeAdapter()
    saga.generate(FakeProviders(replicate=adapter)).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    assert (adapter.submitted, adapter.waited) == ([], ["job-earlier"])
    assert saga.generation(gid).status == "processing"


def test_transient_failures_are_retried_after_the_stated_delay_or_the_backoff(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    adapter = FakeAdapter(
        ProviderFailure("rate_limited", "slow down", retry_after_s=3.0),
        ProviderFailure("provider_error", "hiccup"),
    )
    saga.generate(FakeProviders(replicate=adapter)).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    backoff_s = saga.generations.catalogue.get("flux-schnell").retry.backoff_ms / 1000
    assert saga.sleeps.delays == [3.0, backoff_s * 2]  # Retry-After, then the second backoff
    generation = saga.generation(gid)
    assert (generation.status, generation.attempts, len(adapter.submitted)) == ("processing", 3, 3)


def test_a_final_failure_fails_the_generation_and_settling_releases_the_hold(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    adapter = FakeAdapter(ProviderFailure("invalid_request", "no such size"))
    saga.generate(FakeProviders(replicate=adapter)).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    assert (saga.generation(gid).error or {}).get("code") == "invalid_request"
    assert len(adapter.submitted) == 1  # not retryable
    settle = SettleGeneration(saga.generations, saga.billing)
    assert saga.deliver(settle, saga.last(gid, Generation.Failed)) == (True, False)
    assert saga.available() == to_units(10)


def test_an_open_breaker_falls_back_to_an_equivalent_model_at_its_own_cost(saga: Saga) -> None:
    gid = saga.request(model="flux-dev-fal", width=2048, height=2048)
    saga.fund(gid)
    assert saga.generation(gid).quote == 33555  # 4.19 megapixels at 0.80
    replicate = FakeAdapter()
    providers = FakeProviders(replicate=replicate, fal=FakeAdapter())
    saga.generate(providers, FakeBreakers("fal")).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    fell_back = saga.last(gid, Generation.FellBack)
    assert isinstance(fell_back, Generation.FellBack)
    assert (fell_back.from_model, fell_back.to_model) == ("flux-dev-fal", "flux-dev")
    # flux-dev takes at most 1440 px a side: 2.07 megapixels at 0.90
    assert (fell_back.params, fell_back.cost) == ({"width": 1440, "height": 1440, "seed": 7}, 18663)
    assert [(r.model, r.params, r.cost_units) for r in replicate.submitted] == [
        ("flux-dev", fell_back.params, 18663)
    ]
    generation = saga.generation(gid)
    assert saga.generations.sent_request(generation).cost_units == 18663  # what completes it
    assert saga.generations.state(None, gid).params["width"] == 2048  # as the user asked


def test_a_second_fallback_starts_again_from_the_request_as_first_normalised(
    saga: Saga,
) -> None:
    gid = saga.request(model="flux-dev-fal", width=2048, height=2048)
    saga.fund(gid)
    down = ProviderFailure("unavailable", "503")
    replicate, fal = FakeAdapter(down, down, down), FakeAdapter()
    saga.generate(FakeProviders(replicate=replicate, fal=fal), FalRecovers()).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    # flux-dev-fal (breaker open) -> flux-dev (down) -> flux-dev-fal again, at 2048 px, not 1440
    assert [r.params["width"] for r in replicate.submitted] == [1440] * 3
    assert [(r.model, r.params["width"], r.cost_units) for r in fal.submitted] == [
        ("flux-dev-fal", 2048, 33555)
    ]
    generation = saga.generation(gid)
    assert (generation.model, generation.fallback_from) == ("flux-dev-fal", "flux-dev-fal")


def test_a_fallback_drops_what_the_new_model_does_not_take(saga: Saga) -> None:
    asked = GenerationRequest(
        model="sdxl-lightning", prompt="a fox", negative_prompt="blurry", params={"seed": 1}
    )
    gid = saga.generations.request(saga.user, asked)[0].id
    saga.fund(gid)
    down = ProviderFailure("unavailable", "503")
    replicate = FakeAdapter(down, down, down)
    saga.generate(FakeProviders(replicate=replicate)).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    assert [(r.model, r.negative_prompt) for r in replicate.submitted] == [
        ("sdxl-lightning", "blurry")
    ] * 3 + [("flux-schnell", None)]  # flux-schnell takes no negative prompt


def test_a_fallback_recorded_before_it_carried_its_request_is_normalised_again(
    saga: Saga,
) -> None:
    gid = saga.request(model="flux-dev-fal", width=2048, height=2048)
    generation = saga.generation(gid)
    generation.trigger_event(  # as FellBack was stored before it recorded params and cost
        Generation.FellBack,
        from_model="flux-dev-fal",
        to_model="flux-dev",
        provider="replicate",
        reason="fal: circuit open",
    )
    saga.generations.save(generation)
    sent = saga.generations.sent_request(saga.generation(gid))
    assert (sent.model, sent.params["width"], sent.cost_units) == ("flux-dev", 1440, 18663)


def test_every_fallback_breaker_open_defers(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    providers = FakeProviders(replicate=FakeAdapter(), fal=FakeAdapter())
    generate = saga.generate(providers, FakeBreakers("replicate", "fal"))
    with pytest.raises(Deferral):
        generate.handle(saga.last(gid, Generation.Queued), saga.tracking("generate"))
    generation = saga.generation(gid)
    assert (generation.model, generation.deferred) == ("flux-schnell", "replicate is unavailable")


def test_a_synchronous_provider_answers_with_the_result_and_nothing_waits(saga: Saga) -> None:
    gid = saga.request(model="imagen-3")
    saga.fund(gid)
    openai = FakeAdapter(synchronous=True)
    saga.generate(FakeProviders(openai=openai)).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    generation = saga.generation(gid)
    assert (generation.status, generation.job_id, openai.waited) == ("processing", None, [])


def test_no_fallback_allowed_defers_durably_and_tells_the_user_why(saga: Saga) -> None:
    asked = GenerationRequest(model="flux-schnell", prompt="a fox", allow_fallback=False)
    gid = saga.generations.request(saga.user, asked)[0].id
    saga.fund(gid)
    generate = saga.generate(FakeProviders(replicate=FakeAdapter()), FakeBreakers("replicate"))
    with pytest.raises(Deferral) as deferred:
        generate.handle(saga.last(gid, Generation.Queued), saga.tracking("generate"))
    assert deferred.value.delay_s == DEFER_S
    generation = saga.generation(gid)
    assert (generation.status, generation.deferred) == ("queued", "replicate is unavailable")
    deferral = saga.last(gid, Generation.Deferred)
    assert isinstance(deferral, Generation.Deferred)
    assert deferral.failure == "circuit open"  # no call was made: provider health counts none


def test_a_deferral_after_failed_calls_records_what_they_met(saga: Saga) -> None:
    asked = GenerationRequest(model="flux-schnell", prompt="a fox", allow_fallback=False)
    gid = saga.generations.request(saga.user, asked)[0].id
    saga.fund(gid)
    down = ProviderFailure("timeout", "no answer")
    generate = saga.generate(FakeProviders(replicate=FakeAdapter(down, down, down)))
    with pytest.raises(Deferral):
        generate.handle(saga.last(gid, Generation.Queued), saga.tracking("generate"))
    deferral = saga.last(gid, Generation.Deferred)
    assert isinstance(deferral, Generation.Deferred)
    assert (deferral.reason, deferral.failure) == ("replicate is unavailable", "timeout")


class OpensAfterOneCall(FakeBreakers):
    """replicate's breaker opens once one call has gone through it (another worker's failures
    brought it to the brink)."""

    def is_open(self, provider: str) -> bool:
        return provider == "replicate" and self.guarded.count("replicate") > 1


def test_a_breaker_opened_by_the_calls_own_failure_defers_with_that_failure(saga: Saga) -> None:
    asked = GenerationRequest(model="flux-schnell", prompt="a fox", allow_fallback=False)
    gid = saga.generations.request(saga.user, asked)[0].id
    saga.fund(gid)
    down = ProviderFailure("unavailable", "503")
    replicate = FakeAdapter(down, down, down)
    generate = saga.generate(FakeProviders(replicate=replicate), OpensAfterOneCall())
    with pytest.raises(Deferral):
        generate.handle(saga.last(gid, Generation.Queued), saga.tracking("generate"))
    assert len(replicate.submitted) == 1  # the second attempt met the open breaker
    deferral = saga.last(gid, Generation.Deferred)
    assert isinstance(deferral, Generation.Deferred)
    assert deferral.failure == "unavailable"  # a call was made, and failed


def test_an_outage_that_outlasts_the_retries_falls_back(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    down = ProviderFailure("unavailable", "503")
    replicate, fal = FakeAdapter(down, down, down), FakeAdapter()
    saga.generate(FakeProviders(replicate=replicate, fal=fal), FakeBreakers()).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    # every attempt on flux-schnell, then its first fallback (whose breaker is still closed)
    assert [r.model for r in replicate.submitted] == ["flux-schnell"] * 3 + ["sdxl-lightning"]
    assert fal.submitted == []
    generation = saga.generation(gid)
    assert (generation.model, generation.fallback_from, generation.status) == (
        "sdxl-lightning",
        "flux-schnell",
        "processing",
    )


def test_the_providers_safety_filter_blocks_with_the_billing_policy(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    adapter = FakeAdapter(ProviderFailure("content_rejected", "nsfw"))
    saga.generate(FakeProviders(replicate=adapter)).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    blocked = saga.last(gid, Generation.Blocked)
    assert isinstance(blocked, Generation.Blocked)
    assert (blocked.layer, blocked.charged, blocked.policy) == ("provider", 0, "waive")
    SettleGeneration(saga.generations, saga.billing).handle(blocked, saga.tracking("settle"))
    assert saga.available() == to_units(10)


def test_a_charged_block_after_a_fallback_bills_the_fallbacks_cost() -> None:
    saga = Saga(ModerationPolicy(blocked_billing="charge"))
    gid = saga.request(model="flux-dev-fal", width=2048, height=2048)
    saga.fund(gid)
    replicate = FakeAdapter(ProviderFailure("content_rejected", "nsfw"))
    providers = FakeProviders(replicate=replicate, fal=FakeAdapter())
    saga.generate(providers, FakeBreakers("fal")).handle(
        saga.last(gid, Generation.Queued), saga.tracking("generate")
    )
    blocked = saga.last(gid, Generation.Blocked)
    assert isinstance(blocked, Generation.Blocked)
    assert (blocked.charged, blocked.policy) == (18663, "charge")  # flux-dev's price, not 33555
    SettleGeneration(saga.generations, saga.billing).handle(blocked, saga.tracking("settle"))
    assert saga.billing.position(saga.user).balance == to_units(10) - 18663


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_before_any_provider_has_it_is_immediate(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    assert saga.generations.cancel(saga.user, gid).status == "cancelled"
    SettleGeneration(saga.generations, saga.billing).handle(
        saga.last(gid, Generation.Cancelled), saga.tracking("settle")
    )
    assert saga.available() == to_units(10)


def test_cancel_while_a_provider_has_the_job_asks_the_provider_first(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    generation = saga.generation(gid)
    generation.submitted("job-9", 1)
    saga.generations.save(generation)
    assert saga.generations.cancel(saga.user, gid).status == "cancelling"  # not yet
    adapter = FakeAdapter()
    cancel = CancelAtProvider(saga.generations, FakeProviders(replicate=adapter))
    assert saga.deliver(cancel, saga.last(gid, Generation.CancelRequested)) == (True, False)
    assert adapter.cancelled == ["job-9"]
    assert saga.generation(gid).status == "cancelled"


def test_a_produced_result_is_not_cancelled_by_the_provider_reaction(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    generation = saga.generation(gid)
    generation.submitted("job-9", 1)
    generation.request_cancel()
    generation.produced("k", 64, 64, "image/png", 3, 10)  # it arrived before the cancel did
    saga.generations.save(generation)
    CancelAtProvider(saga.generations, FakeProviders(replicate=FakeAdapter())).handle(
        saga.last(gid, Generation.CancelRequested), saga.tracking("cancel_at_provider")
    )
    assert saga.generation(gid).status == "processing"


# -- settle ----------------------------------------------------------------------------------


def test_completion_captures_what_was_charged_and_releases_the_rest_once(saga: Saga) -> None:
    gid = saga.request()
    saga.fund(gid)
    generation = saga.generation(gid)
    generation.submitted("job-1", 1)
    generation.produced("k", 64, 64, "image/png", 3, 10)
    generation.complete(cost=generation.quote - 1000)
    saga.generations.save(generation)
    settle = SettleGeneration(saga.generations, saga.billing)
    assert saga.deliver(settle, saga.last(gid, Generation.Completed)) == (True, False)
    position = saga.billing.position(saga.user)
    assert (position.balance, position.held) == (to_units(10) - (generation.quote - 1000), 0)
