"""Image inputs: uploads, references resolved from the write side, their rules, their price and
their part in the cache fingerprint (in memory, with hand-written fakes of the ports)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

from application.catalogue import default_catalogue
from application.generations import GenerationsApplication, fingerprint
from application.inputs import ImageInput
from application.normalise import GenerationRequest, InvalidRequest, normalise
from application.uploads import (
    MAX_UPLOAD_BYTES,
    ImageTooLarge,
    IngestedImage,
    UploadNotFound,
    Uploads,
)
from domain.credits import to_units
from domain.generation import Generation
from tests.support.fakes import MemoryBlobs

CATALOGUE = default_catalogue()


class FakeIngest:
    """Takes any bytes as a PNG of the size the test sets."""

    def __init__(self) -> None:
        self.size = (1024, 1024)

    def ingest(self, data: bytes, max_pixels: int) -> IngestedImage:
        width, height = self.size
        if width * height > max_pixels:
            raise ImageTooLarge("too many pixels")
        return IngestedImage(b"stored:" + data, width, height, "png", "image/png")


@pytest.fixture
def blobs() -> MemoryBlobs:
    return MemoryBlobs()


@pytest.fixture
def app(blobs: MemoryBlobs) -> GenerationsApplication:
    return GenerationsApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, blobs=blobs)


@pytest.fixture
def ingest() -> FakeIngest:
    return FakeIngest()


@pytest.fixture
def uploads(app: GenerationsApplication, blobs: MemoryBlobs, ingest: FakeIngest) -> Uploads:
    return Uploads(app, blobs, ingest)


def given(width: int, height: int, sha: str = "a" * 64, ref: str = "upload:x") -> ImageInput:
    return ImageInput(ref, "uploads/u/x.png", width, height, "image/png", sha)


def ask(model: str, prompt: str = "", **params: Any) -> GenerationRequest:
    return GenerationRequest(model=model, prompt=prompt, params=params)


# -- the rules -------------------------------------------------------------------------------


def test_an_upscale_is_its_input_times_the_scale_priced_per_input_megapixel() -> None:
    spec = CATALOGUE.get("real-esrgan")
    done = normalise(spec, ask(spec.key, image="upload:x", scale=2), {"image": given(1024, 768)})
    assert (done.params["width"], done.params["height"]) == (2048, 1536)
    assert done.params["image"] == "upload:x"  # the reference; the adapter sends the bytes
    # 0.20 credits per input megapixel: 1024 x 768 = 0.786432 MP -> 0.1572864, rounded up
    assert done.cost_units == 1573


@pytest.mark.parametrize(
    ("model", "params", "inputs", "field"),
    [
        ("real-esrgan", {"scale": 2}, {}, "params.image"),  # an upscaler needs its image
        ("flux-kontext", {}, {}, "params.image"),  # so does an edit model
        ("real-esrgan", {"image": "upload:x", "scale": 4}, {"image": (2048, 2048)}, "params.image"),
        ("real-esrgan", {"image": "upload:x", "scale": 2}, {"image": (32, 32)}, "params.image"),
        ("real-esrgan", {"image": "upload:x", "width": 512}, {"image": (256, 256)}, "params.width"),
        ("flux-schnell", {"image": "upload:x"}, {"image": (512, 512)}, "params.image"),
        (
            "real-esrgan",
            {"image": "upload:x", "mask": "upload:m"},
            {"image": (512, 512), "mask": (512, 512)},
            "params.mask",
        ),
        (
            "flux-kontext",
            {"image": "upload:x", "mask": "upload:m"},
            {"image": (512, 512), "mask": (256, 256)},
            "params.mask",
        ),
        ("flux-kontext", {"image": 7}, {}, "params.image"),
        ("bria-rmbg", {}, {}, "params.image"),  # a background remover needs its image
        ("rembg", {"image": "upload:x"}, {"image": (32, 32)}, "params.image"),  # too small
        ("rembg", {"image": "upload:x"}, {"image": (5000, 3000)}, "params.image"),  # too big
        ("bria-rmbg", {"image": "upload:x", "width": 512}, {"image": (256, 256)}, "params.width"),
        (
            "rembg",
            {"image": "upload:x", "aspect_ratio": "1:1"},
            {"image": (256, 256)},
            "params.aspect_ratio",
        ),
        ("bria-rmbg", {"image": "upload:x", "scale": 2}, {"image": (256, 256)}, "params.scale"),
        ("bria-rmbg", {"image": "upload:x", "steps": 8}, {"image": (256, 256)}, "params.steps"),
        (
            "rembg",
            {"image": "upload:x", "mask": "upload:m"},
            {"image": (512, 512), "mask": (512, 512)},
            "params.mask",
        ),
    ],
)
def test_inputs_a_model_cannot_take_are_refused_naming_the_field(
    model: str, params: dict[str, Any], inputs: dict[str, tuple[int, int]], field: str
) -> None:
    resolved = {name: given(*size) for name, size in inputs.items()}
    with pytest.raises(InvalidRequest) as refused:
        normalise(CATALOGUE.get(model), ask(model, "make it blue", **params), resolved)
    assert refused.value.field == field


@pytest.mark.parametrize(("model", "credits"), [("bria-rmbg", "0.02"), ("rembg", "0.03")])
def test_a_background_removal_is_its_inputs_size_priced_per_image(model: str, credits: str) -> None:
    spec = CATALOGUE.get(model)
    done = normalise(spec, ask(model, image="upload:x"), {"image": given(1200, 800)})
    assert (done.params["width"], done.params["height"]) == (1200, 800)
    assert done.params["image"] == "upload:x"
    assert done.cost_units == to_units(credits)
    assert done.warnings == ()
    # it takes no prompt and no seed: both dropped with a warning, as unsupported options are
    worded = normalise(
        spec, ask(model, "the cat", image="upload:x", seed=3), {"image": given(640, 480)}
    )
    assert (worded.prompt, "seed" in worded.params) == ("", False)
    assert worded.warnings == (
        f"{model} takes no prompt: it was dropped",
        f"{model} takes no seed: it was dropped",
    )


def test_an_edit_takes_its_inputs_size_unless_asked_otherwise() -> None:
    kontext = CATALOGUE.get("flux-kontext")  # takes ratios: match_input is the default
    done = normalise(
        kontext, ask(kontext.key, "blue", image="upload:x"), {"image": given(1200, 800)}
    )
    assert done.params["aspect_ratio"] == "match_input"
    assert int(done.params["width"]) / int(done.params["height"]) == pytest.approx(1.5, abs=0.02)
    gpt = CATALOGUE.get("gpt-image-edit")  # takes exact sizes: the nearest one it allows
    done = normalise(gpt, ask(gpt.key, "blue", image="upload:x"), {"image": given(1400, 900)})
    assert (done.params["width"], done.params["height"]) == (1536, 1024)


# -- uploads and references ------------------------------------------------------------------


def test_an_upload_is_stored_recorded_and_private(
    uploads: Uploads, blobs: MemoryBlobs, ingest: FakeIngest
) -> None:
    owner = uuid4()
    ingest.size = (640, 480)
    upload = uploads.upload(owner, b"png bytes")
    assert (upload.width, upload.height, upload.format, upload.bytes) == (640, 480, "png", 16)
    assert blobs.get(upload.storage_key) == b"stored:png bytes"
    assert upload.storage_key.startswith(f"uploads/{owner}/")
    assert uploads.get(owner, upload.id) == upload
    with pytest.raises(UploadNotFound):
        uploads.get(uuid4(), upload.id)
    with pytest.raises(UploadNotFound):
        uploads.get(owner, uuid4())
    with pytest.raises(ImageTooLarge):
        uploads.upload(owner, bytes(MAX_UPLOAD_BYTES + 1))
    ingest.size = (8000, 8000)
    with pytest.raises(ImageTooLarge):
        uploads.upload(owner, b"a bomb")


def test_a_request_records_its_resolved_inputs_and_sends_them(
    app: GenerationsApplication, uploads: Uploads
) -> None:
    owner = uuid4()
    upload = uploads.upload(owner, b"a picture")
    request = ask("real-esrgan", image=f"upload:{upload.id}", scale=2)
    quote = app.quote(request, owner)
    assert quote.cost_units == 2098  # 1024 x 1024 at 0.20 per megapixel
    state, _ = app.request(owner, request)
    generation = app.generation(owner, state.id)
    assert generation.inputs == {
        "image": {
            "reference": f"upload:{upload.id}",
            "storage_key": upload.storage_key,
            "width": 1024,
            "height": 1024,
            "media_type": "image/png",
            "sha256": upload.sha256,
        }
    }
    sent = app.sent_request(generation)
    assert sent.inputs["image"].storage_key == upload.storage_key
    # a fallback takes the same input, normalised for the other upscaler
    fallback = app.normalised_for(generation, CATALOGUE.get("clarity-upscaler"))
    assert (fallback.params["width"], fallback.inputs["image"]) == (2048, sent.inputs["image"])


def test_a_background_removal_falls_back_to_the_other_remover_at_the_same_size(
    app: GenerationsApplication, uploads: Uploads, ingest: FakeIngest
) -> None:
    owner = uuid4()
    ingest.size = (800, 600)
    upload = uploads.upload(owner, b"a picture")
    state, _ = app.request(owner, ask("bria-rmbg", image=f"upload:{upload.id}"))
    generation = app.generation(owner, state.id)
    assert (generation.params["width"], generation.params["height"]) == (800, 600)
    fallback = app.normalised_for(generation, CATALOGUE.get("rembg"))
    assert (fallback.params["width"], fallback.params["height"]) == (800, 600)
    assert fallback.cost_units == to_units("0.03")
    assert fallback.inputs["image"].storage_key == upload.storage_key


@pytest.mark.parametrize(
    "reference",
    ["upload:{foreign}", "upload:{unknown}", "generation:{foreign}", "picture", "upload:12"],
)
def test_a_reference_that_is_not_the_callers_is_refused(
    app: GenerationsApplication, uploads: Uploads, reference: str
) -> None:
    foreign = uploads.upload(uuid4(), b"someone else's").id
    text = reference.format(foreign=foreign, unknown=uuid4())
    with pytest.raises(InvalidRequest) as refused:
        app.quote(ask("real-esrgan", image=text), uuid4())
    assert refused.value.field == "params.image"


def _finish(app: GenerationsApplication, blobs: MemoryBlobs, owner: UUID, *, blocked: bool) -> UUID:
    state, _ = app.request(owner, GenerationRequest(model="flux-schnell", prompt="a fox"))
    generation = app.load(state.id, Generation)
    generation.fund(uuid4())
    generation.queue()
    generation.submitted("job", 1)
    key = f"generations/{state.id}/original.png"
    blobs.put(key, b"the result", "image/png")
    generation.produced(f"generations/{state.id}/raw.png", 512, 512, "image/png", 10, 5)
    artefact = {"kind": "original", "storage_key": key, "width": 512, "height": 512}
    generation.process([{**artefact, "format": "png", "media_type": "image/png"}], "h", 1, 0, "v")
    if blocked:
        generation.block("classifier", "nsfw", "v", score=0.9)
    else:
        generation.complete(3000)
    app.save(generation)
    return state.id


def test_a_generation_is_an_input_once_completed_and_not_blocked(
    app: GenerationsApplication, blobs: MemoryBlobs
) -> None:
    owner = uuid4()
    done = _finish(app, blobs, owner, blocked=False)
    edit = ask("flux-kontext", "make it blue", image=f"generation:{done}", seed=3)
    quoted = app.quote(edit, owner)
    assert quoted.inputs["image"].storage_key == f"generations/{done}/original.png"
    assert (quoted.params["width"], quoted.params["height"]) == (512, 512)  # the input's
    blocked = _finish(app, blobs, owner, blocked=True)
    pending, _ = app.request(owner, GenerationRequest(model="flux-schnell", prompt="later"))
    for source, why in ((blocked, "blocked"), (pending.id, "requested")):
        with pytest.raises(InvalidRequest, match=why) as refused:
            app.quote(ask("flux-kontext", "blue", image=f"generation:{source}"), owner)
        assert refused.value.field == "params.image"
    with pytest.raises(InvalidRequest):  # not another user's
        app.quote(edit, uuid4())


def test_the_cache_fingerprint_counts_an_input_by_its_content(
    app: GenerationsApplication, uploads: Uploads
) -> None:
    owner = uuid4()
    first, same, other = (uploads.upload(owner, data) for data in (b"one", b"one", b"two"))

    def printed(upload_id: UUID) -> str:
        request = ask("flux-kontext", "make it blue", image=f"upload:{upload_id}", seed=1)
        return fingerprint(app.quote(request, owner))

    assert printed(first.id) == printed(same.id)  # the same bytes under another upload
    assert printed(first.id) != printed(other.id)
