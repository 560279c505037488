"""What a client is shown of a result: every artefact the pipeline made, the re-encoded original
included, each with its URL, size, format and bytes (the real pipeline, the in-memory store)."""

from __future__ import annotations

from uuid import UUID, uuid4

from eventsourcing.persistence import Tracking

from application import assets
from application.generations import GenerationsApplication, GenerationState
from application.imaging import Classification
from application.moderation import ModerationPolicy
from application.normalise import GenerationRequest
from application.post_processing import DeriveResult, ProcessResult
from domain.generation import Generation
from infrastructure.imaging.pipeline import IMAGE_KINDS, PyvipsPipeline
from infrastructure.simulator.render import render
from infrastructure.simulator.video import mp4
from interfaces.http.views import asset_of, view_of
from tests.support.fakes import MemoryBlobs


class Classifier:
    def classify(self, data: bytes, media_type: str) -> Classification:
        return Classification(0.01, "test-classifier-1")


def completed(
    ask: GenerationRequest, data: bytes, content_type: str
) -> tuple[GenerationsApplication, MemoryBlobs, UUID]:
    """A generation whose provider produced ``data``, through the real pipeline."""
    app = GenerationsApplication(
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, moderation=ModerationPolicy()
    )
    generation = app.generation(None, app.request(uuid4(), ask)[0].id)
    generation.fund(uuid4())
    generation.queue()
    generation.submitted("job-1", 1)
    key = assets.result_key(generation.id, content_type)
    generation.produced(key, 640, 360, content_type, len(data), 900)
    app.save(generation)
    blobs = MemoryBlobs()
    blobs.put(key, data, content_type)
    reaction = ProcessResult(app, blobs, PyvipsPipeline(), Classifier())
    event = next(e for e in app.events.get(generation.id) if isinstance(e, Generation.Produced))
    assert reaction.handle(event, Tracking("generations", 5))
    completed = list(app.events.get(generation.id))[-1]
    if isinstance(completed, Generation.Completed):  # then the derivatives
        assert DeriveResult(app, blobs, PyvipsPipeline()).handle(
            completed, Tracking("generations", 6)
        )
    return app, blobs, generation.id


def served(
    app: GenerationsApplication, blobs: MemoryBlobs, generation_id: UUID, kind: str
) -> bytes:
    generation = app.generation(None, generation_id)
    found = asset_of({**(generation.result or {}), "processed": generation.processed}, kind)
    assert found is not None, kind
    return blobs.get(found[0])


def test_an_image_lists_six_artefacts_the_original_among_them() -> None:
    png = render("a fox", 4, 640, 360)
    ask = GenerationRequest(
        model="sim-instant",
        prompt="a fox",
        params={"width": 640, "height": 360, "seed": 4},
        output_format="jpeg",
    )
    app, blobs, generation_id = completed(ask, png, "image/png")
    generation = app.generation(None, generation_id)
    assert generation.status == "completed"
    result = view_of(GenerationState.of(generation)).result
    assert result is not None
    listed = {d.kind: d for d in result.derivatives}
    assert [d.kind for d in result.derivatives] == list(IMAGE_KINDS)
    assert len(listed) == 6
    original = listed["original"]
    assert (original.url, original.width, original.height, original.format) == (
        result.url,
        result.width,
        result.height,
        result.format,
    )
    assert (original.width, original.height, original.format) == (640, 360, "jpeg")
    assert (listed["social"].width, listed["social"].height) == (640, 336)  # never enlarged
    for derivative in result.derivatives:
        assert derivative.url == assets.asset_url(generation_id, derivative.kind)
        assert len(served(app, blobs, generation_id, derivative.kind)) == derivative.bytes
    # the provider's file is kept as it came; the re-encoded original is stored beside it
    assert blobs.get(assets.result_key(generation_id, "image/png")) == png


def test_a_video_lists_its_poster_thumbnail_and_the_stripped_mp4() -> None:
    source = mp4("a fox", 4, 640, 360, duration_s=1)
    params = {"aspect_ratio": "16:9", "seed": 4, "duration_s": 5}
    ask = GenerationRequest(model="kling-video", prompt="a fox", params=params)
    app, blobs, generation_id = completed(ask, source, "video/mp4")
    generation = app.generation(None, generation_id)
    assert generation.status == "completed"
    assert generation.processed is not None
    assert generation.processed["nsfw_score"] == 0.01  # the poster was judged
    result = view_of(GenerationState.of(generation)).result
    assert result is not None
    assert (result.width, result.height, result.format) == (640, 360, "mp4")
    listed = {d.kind: d for d in result.derivatives}
    assert set(listed) == {"thumb", "poster", "original"}
    assert (listed["poster"].width, listed["poster"].height) == (640, 360)
    assert (listed["thumb"].width, listed["thumb"].height) == (256, 144)
    mp4_served = served(app, blobs, generation_id, "original")
    assert mp4_served[4:8] == b"ftyp"
    assert b"a fox" in source
    assert b"a fox" not in mp4_served  # the title tag (the prompt) is gone
    assert len(mp4_served) == listed["original"].bytes
