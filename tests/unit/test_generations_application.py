"""The generation use cases on the in-memory store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4, uuid5

import pytest

from application.generations import _KEY_NAMESPACE, GenerationsApplication, IdempotencyConflict
from application.normalise import GenerationRequest, InvalidRequest
from domain.generation import Generation, GenerationFinished, IdempotencyKey


@pytest.fixture
def app() -> GenerationsApplication:
    return GenerationsApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


ASK = GenerationRequest(model="flux-schnell", prompt="a fox", params={"seed": 1})


def test_request_quotes_and_records(app: GenerationsApplication) -> None:
    generation, created = app.request(uuid4(), ASK)
    assert created
    assert generation.status == "requested"
    assert generation.quote == 3000
    assert generation.id.version == 7


def test_idempotency_key_answers_the_first_generation_and_refuses_another_body(
    app: GenerationsApplication,
) -> None:
    user = uuid4()
    first, _ = app.request(user, ASK, "k")
    again, created = app.request(user, ASK, "k")
    assert (again.id, created) == (first.id, False)
    with pytest.raises(IdempotencyConflict):
        app.request(user, GenerationRequest(model="flux-schnell", prompt="other"), "k")
    other_user, _ = app.request(uuid4(), ASK, "k")  # keys are per user
    assert other_user.id != first.id


def test_replay_finds_what_a_live_key_made_and_nothing_else(app: GenerationsApplication) -> None:
    user = uuid4()
    assert app.replay(user, ASK, "k") is None  # nothing yet: the request is new
    first, _ = app.request(user, ASK, "k")
    replayed = app.replay(user, ASK, "k")
    assert replayed is not None and replayed.id == first.id
    assert app.replay(uuid4(), ASK, "k") is None  # keys are per user
    with pytest.raises(IdempotencyConflict):
        app.replay(user, GenerationRequest(model="flux-schnell", prompt="other"), "k")


def test_a_key_older_than_a_day_makes_a_new_generation(app: GenerationsApplication) -> None:
    user = uuid4()
    old = IdempotencyKey._create(
        IdempotencyKey.Claimed,
        id=uuid5(_KEY_NAMESPACE, f"{user}:k"),
        generation_id=uuid4(),
        request_hash="x",
        timestamp=datetime.now(UTC) - timedelta(hours=25),
    )
    app.save(old)
    generation, created = app.request(
        user, GenerationRequest(model="flux-schnell", prompt="new"), "k"
    )
    assert created
    assert (
        app.request(user, GenerationRequest(model="flux-schnell", prompt="new"), "k")[0].id
        == generation.id
    )


def test_cancel_before_submission_is_immediate_and_final(app: GenerationsApplication) -> None:
    user = uuid4()
    generation, _ = app.request(user, ASK)
    assert app.cancel(user, generation.id).status == "cancelled"
    with pytest.raises(GenerationFinished):
        app.cancel(user, generation.id)


def test_unknown_models_and_bad_params_are_refused_naming_the_field(
    app: GenerationsApplication,
) -> None:
    with pytest.raises(InvalidRequest) as unknown:
        app.request(uuid4(), GenerationRequest(model="nope", prompt="x"))
    assert unknown.value.field == "model"


def test_charges_never_exceed_the_quote() -> None:
    generation = Generation.request(
        generation_id=uuid4(),
        user_id=uuid4(),
        model="m",
        provider="p",
        prompt="x",
        negative_prompt=None,
        params={},
        output_format="png",
        quote=100,
        allow_fallback=True,
        fingerprint="f",
        request_hash="h",
    )
    generation.complete(cost=250)
    assert generation.charged == 100


def test_a_produced_result_can_no_longer_be_cancelled(app: GenerationsApplication) -> None:
    """The provider has delivered (and billed us); the result is processed and charged."""
    user = uuid4()
    generation = app.generation(user, app.request(user, ASK)[0].id)
    generation.fund(uuid4())
    generation.queue()
    generation.submitted("job-1", 1)
    generation.produced("k", 64, 64, "image/png", 3, 10)
    app.save(generation)
    with pytest.raises(GenerationFinished, match="being processed"):
        app.cancel(user, generation.id)
    assert not app.generation(user, generation.id).cancel_requested
