"""The provider adapters against the simulator, over real HTTP: each wire style, each failure."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Mapping
from typing import Any

import av
import httpx
import pytest
import pyvips

from application.catalogue import default_catalogue
from application.inputs import ImageInput
from application.normalise import GenerationRequest, normalise
from application.providers import Progress, ProviderFailure
from infrastructure.providers import Providers
from infrastructure.providers.inputs import ProviderInputs
from infrastructure.simulator.render import render

pytestmark = pytest.mark.integration
CATALOGUE = default_catalogue()


@pytest.fixture
def providers(simulator: str) -> Providers:
    return Providers(
        CATALOGUE, lambda name: (f"{simulator}/{name}", f"key-{name}"), poll_interval_s=0.02
    )


def faults(simulator: str, provider: str, **settings: Any) -> None:
    assert httpx.post(f"{simulator}/_sim/faults/{provider}", json=settings).status_code == 200


def submissions(simulator: str, provider: str) -> int:
    stats = httpx.get(f"{simulator}/_sim/stats").json()
    return int(stats.get(provider, {}).get("submissions", 0))


class DataInputs(ProviderInputs):
    """Image inputs from memory, linked as ``data:`` URIs (the simulator takes those as it
    takes links: no API needs to serve them)."""

    def __init__(self, blobs: Mapping[str, bytes]) -> None:
        self.stored = dict(blobs)

    def url(self, item: ImageInput) -> str:
        return "data:image/png;base64," + self.base64(item)

    def base64(self, item: ImageInput) -> str:
        return base64.b64encode(self.stored[item.storage_key]).decode()


def stored(key: str, data: bytes) -> ImageInput:
    image = pyvips.Image.new_from_buffer(data, "")
    sha = hashlib.sha256(data).hexdigest()
    return ImageInput("upload:x", key, image.width, image.height, "image/png", sha)


def run(
    providers: Providers,
    model: str,
    prompt: str = "a red fox",
    inputs: Mapping[str, ImageInput] | None = None,
    **params: Any,
) -> Any:
    spec = CATALOGUE.get(model)
    request = normalise(
        spec,
        GenerationRequest(model=model, prompt=prompt, params={"seed": 7, **params}),
        inputs,
    )
    adapter = providers.for_model(spec)
    progress: list[Progress] = []
    submitted = adapter.submit(spec, request)
    output = submitted.output or adapter.wait(spec, submitted.job_id or "", progress.append)
    return adapter.fetch(output), output, progress


@pytest.mark.parametrize("model", ["sim-instant", "flux-dev-fal", "imagen-3"])
def test_each_wire_style_produces_the_deterministic_picture(
    providers: Providers, model: str
) -> None:
    data, output, _ = run(providers, model, width=256, height=256)
    assert (output.width, output.height) == (256, 256)
    seed = 0 if model == "imagen-3" else 7  # imagen takes no seed: the adapter never sends one
    assert data == render("a red fox", seed, 256, 256)


@pytest.mark.parametrize("model", ["bria-rmbg", "rembg"])  # queue, predictions
def test_background_removers_make_the_plain_background_transparent(
    simulator: str, model: str
) -> None:
    backdrop = pyvips.Image.black(96, 72).new_from_image([30, 140, 60])
    square = pyvips.Image.black(32, 32).new_from_image([220, 40, 90])
    data = bytes(
        backdrop.insert(square, 32, 20).copy(interpretation="srgb").write_to_buffer(".png")
    )
    source = stored("uploads/u/plain.png", data)
    providers = Providers(
        CATALOGUE,
        lambda name: (f"{simulator}/{name}", f"key-{name}"),
        poll_interval_s=0.02,
        inputs=DataInputs({source.storage_key: data}),
    )
    result, output, _ = run(providers, model, "", {"image": source}, image=source.reference)
    assert (output.width, output.height, output.content_type) == (96, 72, "image/png")
    cut = pyvips.Image.new_from_buffer(result, "")
    assert (cut.width, cut.height, cut.bands) == (96, 72, 4)
    alpha = cut[3]
    for x, y in ((0, 0), (95, 71), (10, 36), (80, 5)):  # the border and the backdrop
        assert alpha(x, y) == [0.0]
    assert alpha.crop(36, 24, 24, 24).min() == 255  # the square, inside its soft edge
    assert cut(48, 36)[:3] == [220, 40, 90]  # its colours are kept


def test_the_queue_streams_progress_with_previews(providers: Providers, simulator: str) -> None:
    faults(simulator, "fal", latency_scale=0.2)  # about 1 s for flux-dev-fal
    _, _, progress = run(providers, "flux-dev-fal", width=256, height=256)
    percents = [p.percent for p in progress]
    assert percents == sorted(percents)
    assert any(p.preview_url for p in progress)
    preview = httpx.get(next(p.preview_url for p in progress if p.preview_url))
    assert preview.headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize("model", ["minimax-video", "kling-video"])  # predictions, queue
def test_video_models_deliver_an_h264_mp4_of_the_requested_size_and_length(
    providers: Providers, model: str
) -> None:
    seconds = (CATALOGUE.get(model).capabilities.durations_s or (5,))[-1]
    data, output, _ = run(providers, model, aspect_ratio="1:1", duration_s=seconds)
    assert output.content_type == "video/mp4"
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        size = (stream.codec_context.width, stream.codec_context.height)
        assert size == (output.width, output.height) == (960, 960)
        assert container.duration == seconds * av.time_base


@pytest.mark.parametrize(
    ("provider", "model"),
    [("replicate", "sim-instant"), ("fal", "flux-dev-fal"), ("openai", "imagen-3")],
)
def test_failures_map_onto_one_taxonomy(
    providers: Providers, simulator: str, provider: str, model: str
) -> None:
    faults(simulator, provider, rate_limited=1, retry_after_s=2)
    with pytest.raises(ProviderFailure) as limited:
        run(providers, model)
    assert (limited.value.kind, limited.value.retry_after_s) == ("rate_limited", 2.0)

    faults(simulator, provider, outage=True)
    with pytest.raises(ProviderFailure) as down:
        run(providers, model)
    assert down.value.kind == "unavailable"
    assert down.value.retryable

    faults(simulator, provider, reject_content="forbidden")
    with pytest.raises(ProviderFailure) as rejected:
        run(providers, model, prompt="something forbidden")
    assert rejected.value.kind == "content_rejected"
    assert not rejected.value.retryable


def test_nothing_listening_is_unavailable() -> None:
    dead = Providers(CATALOGUE, lambda _name: ("http://127.0.0.1:9/nowhere", "k"))
    with pytest.raises(ProviderFailure) as failure:
        run(dead, "sim-instant")
    assert failure.value.kind == "unavailable"


def test_cancel_reaches_the_provider(providers: Providers, simulator: str) -> None:
    faults(simulator, "replicate", hang=True)
    cancels = httpx.get(f"{simulator}/_sim/stats").json().get("replicate", {}).get("cancels", 0)
    spec = CATALOGUE.get("sim-instant")
    adapter = providers.for_model(spec)
    request = normalise(spec, GenerationRequest(model="sim-instant", prompt="x"))
    job = adapter.submit(spec, request).job_id
    assert job is not None
    adapter.cancel(spec, job)
    with pytest.raises(ProviderFailure, match="canceled"):
        adapter.wait(spec, job)
    assert httpx.get(f"{simulator}/_sim/stats").json()["replicate"]["cancels"] == cancels + 1


def test_a_hung_job_times_out_at_the_models_limit(providers: Providers, simulator: str) -> None:
    import msgspec  # noqa: PLC0415

    faults(simulator, "replicate", hang=True)
    spec = msgspec.structs.replace(
        CATALOGUE.get("sim-instant"),
        timeouts=msgspec.structs.replace(CATALOGUE.get("sim-instant").timeouts, total_s=1),
    )
    adapter = providers.for_model(spec)
    before = submissions(simulator, "replicate")
    job = adapter.submit(spec, normalise(spec, GenerationRequest(model=spec.key, prompt="x")))
    started = time.monotonic()
    with pytest.raises(ProviderFailure) as failure:
        adapter.wait(spec, job.job_id or "")
    assert failure.value.kind == "timeout"
    assert time.monotonic() - started < 5
    assert submissions(simulator, "replicate") == before + 1  # waited on, never resubmitted


def test_the_simulator_records_when_it_was_asked_about_a_job(
    providers: Providers, simulator: str
) -> None:
    faults(simulator, "replicate", latency_s=0.3, latency_scale=1.0)
    spec = CATALOGUE.get("sim-instant")
    adapter = providers.for_model(spec)
    job = adapter.submit(spec, normalise(spec, GenerationRequest(model=spec.key, prompt="x")))
    adapter.wait(spec, job.job_id or "")
    record = httpx.get(f"{simulator}/_sim/jobs/{job.job_id}").json()
    assert record["latency_s"] == 0.3  # exactly the fault's, whatever the model's timing
    polled = record["polled_at"]
    assert len(polled) >= 2
    assert polled == sorted(polled)
    assert record["created"] < polled[0]
    assert polled[-1] >= record["created"] + 0.3  # the last one found it done
