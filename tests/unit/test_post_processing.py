"""The process_result reaction with the in-memory store and stand-in ports: the verdict, the
billing policy, failures and redelivery."""

from __future__ import annotations

from uuid import uuid4

import pytest
from eventsourcing.persistence import Tracking

from application.generations import GenerationsApplication
from application.imaging import (
    Artefact,
    Classification,
    ClassifierUnavailable,
    ProcessedImage,
    ProcessingFailed,
)
from application.moderation import ModerationPolicy
from application.normalise import GenerationRequest
from application.ports import Deferral
from application.post_processing import DeriveResult, ProcessResult
from domain.generation import Generation
from tests.support.fakes import MemoryBlobs

SHOWN = ("thumb", "preview")
DERIVED = ("full", "modern", "original")


class Pipeline:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.runs, self.derived = fail, 0, 0

    def process(self, data: bytes, *, video: bool) -> ProcessedImage:
        self.runs += 1
        if self.fail:
            raise ProcessingFailed("the result is not a readable image: truncated")
        assert (data, video) == (b"raw", False)
        artefacts = [Artefact(k, k.encode(), 64, 64, "webp", "image/webp") for k in SHOWN]
        return ProcessedImage(artefacts, 64, 64, "LEHV6nWB2yk8", 0.61)

    def derive(self, data: bytes, output_format: str, *, video: bool) -> list[Artefact]:
        self.derived += 1
        if self.fail:
            raise ProcessingFailed("the result is not a readable image: truncated")
        assert (data, output_format, video) == (b"raw", "png", False)
        return [Artefact(k, k.encode(), 64, 64, "webp", "image/webp") for k in DERIVED]


class Classifier:
    def __init__(self, score: float = 0.1, down: bool = False) -> None:
        self.score, self.down = score, down

    def classify(self, data: bytes, media_type: str) -> Classification:
        if self.down:
            raise ClassifierUnavailable("connection refused")
        assert (data, media_type) == (b"preview", "image/webp")
        return Classification(self.score, "test-classifier-1")


def produced(policy: ModerationPolicy) -> tuple[GenerationsApplication, MemoryBlobs, Generation]:
    app = GenerationsApplication(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, moderation=policy
    )
    ask = GenerationRequest(model="flux-schnell", prompt="a fox", params={"seed": 1})
    generation = app.generation(None, app.request(uuid4(), ask)[0].id)
    generation.fund(uuid4())
    generation.queue()
    generation.submitted("job-1", 1)
    generation.produced("generations/x/original.png", 64, 64, "image/png", 3, 900)
    app.save(generation)
    blobs = MemoryBlobs()
    blobs.put("generations/x/original.png", b"raw", "image/png")
    return app, blobs, generation


def run(
    app: GenerationsApplication,
    blobs: MemoryBlobs,
    generation: Generation,
    *,
    pipeline: Pipeline | None = None,
    classifier: Classifier | None = None,
) -> bool:
    """Delivers the generation's ``Produced`` event to the reaction (as notification 5)."""
    reaction = ProcessResult(app, blobs, pipeline or Pipeline(), classifier or Classifier())
    event = next(e for e in app.events.get(generation.id) if isinstance(e, Generation.Produced))
    return reaction.handle(event, Tracking("generations", 5))


def test_a_clean_image_is_processed_then_completed_at_its_cost() -> None:
    app, blobs, generation = produced(ModerationPolicy())
    assert run(app, blobs, generation)
    done = app.generation(None, generation.id)
    assert done.status == "completed"
    assert done.charged == 3000
    assert done.processed is not None
    assert [a["kind"] for a in done.processed["artefacts"]] == list(SHOWN)
    assert done.processed["classifier"] == "test-classifier-1"
    assert blobs.get(f"generations/{generation.id}/thumb.webp") == b"thumb"


def derive(
    app: GenerationsApplication,
    blobs: MemoryBlobs,
    generation: Generation,
    pipeline: Pipeline,
    position: int = 6,
) -> bool:
    """Delivers the generation's last ``Completed`` event to ``derive_result`` (as 6)."""
    reaction = DeriveResult(app, blobs, pipeline)
    event = next(
        e
        for e in reversed(list(app.events.get(generation.id)))
        if isinstance(e, Generation.Completed)
    )
    return reaction.handle(event, Tracking("generations", position))


def test_derivatives_follow_a_shown_result_once() -> None:
    app, blobs, generation = produced(ModerationPolicy())
    pipeline = Pipeline()
    assert run(app, blobs, generation, pipeline=pipeline)
    shown = app.generation(None, generation.id).version
    assert derive(app, blobs, generation, pipeline)
    assert not derive(app, blobs, generation, pipeline)  # redelivered: nothing again
    done = app.generation(None, generation.id)
    assert pipeline.derived == 1
    assert (done.status, done.version) == ("completed", shown + 1)
    assert done.processed is not None
    assert [a["kind"] for a in done.processed["artefacts"]] == [*SHOWN, *DERIVED]
    assert blobs.get(f"generations/{generation.id}/full.webp") == b"full"
    assert isinstance(list(app.events.get(generation.id))[-1], Generation.Derived)


def test_derivatives_that_cannot_be_made_are_recorded_as_none() -> None:
    """A stream waiting for them learns that the shown artefacts are all there is."""
    app, blobs, generation = produced(ModerationPolicy())
    assert run(app, blobs, generation, pipeline=Pipeline())
    assert derive(app, blobs, generation, Pipeline(fail=True))
    assert not derive(app, blobs, generation, Pipeline())  # recorded once: not made again
    done = app.generation(None, generation.id)
    last = list(app.events.get(generation.id))[-1]
    assert isinstance(last, Generation.Derived)
    assert last.artefacts == []
    assert done.processed is not None
    assert [a["kind"] for a in done.processed["artefacts"]] == list(SHOWN)


def cached_copy(app: GenerationsApplication, source: Generation) -> Generation:
    """An identical request served from ``source``'s result as it stands now."""
    ask = GenerationRequest(model="flux-schnell", prompt="a fox", params={"seed": 1})
    copy = app.generation(None, app.request(uuid4(), ask)[0].id)
    copy.fund(uuid4())
    shown = app.generation(None, source.id)
    copy.serve_from_cache(source.id, {**(shown.result or {}), "processed": shown.processed}, 0)
    app.save(copy)
    return copy


def test_a_copy_served_before_its_sources_derivatives_gets_its_own_and_a_later_one_none() -> None:
    app, blobs, source = produced(ModerationPolicy())
    assert run(app, blobs, source)
    early = cached_copy(app, source)  # the source is shown; its derivatives are not made yet
    pipeline = Pipeline()
    assert derive(app, blobs, early, pipeline, position=10)
    made = app.generation(None, early.id).processed
    assert made is not None
    assert [a["kind"] for a in made["artefacts"]] == [*SHOWN, *DERIVED]
    assert derive(app, blobs, source, pipeline, position=11)
    late = cached_copy(app, source)  # it shares the source's derivatives
    assert not derive(app, blobs, late, pipeline, position=12)
    assert pipeline.derived == 2


def test_a_blocked_result_gets_no_derivatives() -> None:
    app, blobs, generation = produced(ModerationPolicy(0.5, "waive"))
    pipeline = Pipeline()
    assert run(app, blobs, generation, pipeline=pipeline, classifier=Classifier(score=0.9))
    assert app.generation(None, generation.id).status == "blocked"
    reaction = DeriveResult(app, blobs, pipeline)
    blocked = list(app.events.get(generation.id))[-1]
    assert not reaction.handle(blocked, Tracking("generations", 6))
    assert pipeline.derived == 0


@pytest.mark.parametrize(("billing", "charged"), [("waive", 0), ("charge", 3000)])
def test_a_score_at_the_threshold_blocks_and_the_policy_decides_the_charge(
    billing: str, charged: int
) -> None:
    app, blobs, generation = produced(ModerationPolicy(0.5, billing))  # type: ignore[arg-type]
    assert run(app, blobs, generation, classifier=Classifier(score=0.5))
    blocked = app.generation(None, generation.id)
    assert blocked.status == "blocked"
    assert blocked.charged == charged
    last = list(app.events.get(generation.id))[-1]
    assert isinstance(last, Generation.Blocked)
    assert (last.layer, last.version, last.policy, last.score) == (
        "classifier",
        "test-classifier-1",
        billing,
        0.5,
    )


def test_an_unreachable_classifier_defers_and_records_nothing() -> None:
    app, blobs, generation = produced(ModerationPolicy())
    with pytest.raises(Deferral):
        run(app, blobs, generation, classifier=Classifier(down=True))
    assert app.generation(None, generation.id).status == "processing"


def test_an_unreadable_result_fails_without_a_charge() -> None:
    app, blobs, generation = produced(ModerationPolicy())
    assert run(app, blobs, generation, pipeline=Pipeline(fail=True))
    failed = app.generation(None, generation.id)
    assert failed.status == "failed"
    assert failed.error == {
        "code": "processing_failed",
        "message": "the result is not a readable image: truncated",
    }


def test_a_redelivered_message_processes_nothing_twice() -> None:
    app, blobs, generation = produced(ModerationPolicy())
    pipeline = Pipeline()
    assert not app.already_processed(Tracking("generations", 5))
    assert run(app, blobs, generation, pipeline=pipeline)
    assert app.already_processed(Tracking("generations", 5))  # recorded with the change
    version = app.generation(None, generation.id).version
    assert not run(app, blobs, generation, pipeline=pipeline)
    assert pipeline.runs == 1
    assert app.generation(None, generation.id).version == version


def test_a_delivery_overtaken_by_its_duplicate_finds_the_tracking_record() -> None:
    """Two deliveries of one message at once: the one that finishes second passed every check
    before the first had recorded anything, so only the tracking record can stop it."""
    app, blobs, generation = produced(ModerationPolicy())

    class Overtaken(Pipeline):
        def process(self, data: bytes, *, video: bool) -> ProcessedImage:
            if not self.runs:  # while this delivery is in the pipeline, its duplicate finishes
                assert run(app, blobs, generation)
            return super().process(data, video=video)

    assert not run(app, blobs, generation, pipeline=Overtaken())
    events = list(app.events.get(generation.id))
    assert [type(e) for e in events].count(Generation.Completed) == 1
    assert [type(e) for e in events].count(Generation.Processed) == 1


def test_a_classifier_down_for_too_long_fails_the_generation_instead_of_waiting_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import timedelta  # noqa: PLC0415

    from application import post_processing  # noqa: PLC0415

    app, blobs, generation = produced(ModerationPolicy())
    monkeypatch.setattr(post_processing, "CLASSIFIER_PATIENCE", timedelta(seconds=-1))
    assert run(app, blobs, generation, classifier=Classifier(down=True))
    failed = app.generation(None, generation.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert "classifier was unavailable" in failed.error["message"]
