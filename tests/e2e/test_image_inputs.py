"""Image inputs end to end, every process real: the API (uvicorn), the worker, the dispatcher,
the projections and the simulator, which fetches each input from the API over HTTP through a
signed link (predictions, queue) or receives it base64 (images), and really upscales or edits
the pixels it was given."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyvips

from domain.generation import TERMINAL
from infrastructure.settings import Settings
from infrastructure.simulator.render import picture, render
from interfaces.bootstrap import Container, build
from interfaces.cli.launch import with_simulator
from tests.integration.test_uploads import bomb
from tests.support.processes import free_port, launcher, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Platform:
    container: Container
    http: httpx.Client
    simulator: str

    def user(self, email: str, credits: str = "20") -> dict[str, str]:
        made = self.container.users.create(email, credits)
        headers = {"Authorization": f"Bearer {made.api_key}"}
        funded = lambda: self.http.get("/v1/credits", headers=headers).json()["balance"] != "0.0000"  # noqa: E731
        assert wait_for(funded, timeout=20)
        return headers

    def upload(self, headers: dict[str, str], data: bytes) -> dict[str, Any]:
        sent = self.http.post(
            "/v1/uploads", content=data, headers={**headers, "Content-Type": "image/png"}
        )
        assert sent.status_code == 201, sent.text
        return dict(sent.json())

    def generate(self, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
        accepted = self.http.post("/v1/generations", json=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        seen: dict[str, Any] = {}

        def done() -> bool:
            response = self.http.get(f"/v1/generations/{accepted.json()['id']}", headers=headers)
            if response.status_code == 200:
                seen.update(response.json())
            return seen.get("status") in TERMINAL

        assert wait_for(done, timeout=90, interval=0.1), seen
        return seen

    def image(self, headers: dict[str, str], generation: dict[str, Any]) -> pyvips.Image:
        assert generation["status"] == "completed", generation
        data = self.http.get(generation["result"]["url"], headers=headers).content
        return pyvips.Image.new_from_buffer(data, "")

    def refused(self, headers: dict[str, str], body: dict[str, Any]) -> str:
        answer = self.http.post("/v1/generations", json=body, headers=headers)
        assert answer.status_code == 422, answer.text
        return str(answer.json()["errors"][0]["field"])


@pytest.fixture
def platform(settings: Settings, simulator: str, tmp_path: Path) -> Iterator[Platform]:
    port = free_port()
    settings = with_simulator(replace(settings, projection_batch=200, http_port=port), simulator)
    container = build(settings)
    for name in ("ledger", "generations"):
        container.projection(name).start()
    processes = launcher(settings, PIXEVO_LOG_LEVEL="INFO")
    with (
        processes.running(("api", "worker", "dispatcher", "projections"), tmp_path),
        httpx.Client(base_url=settings.api_url(), timeout=30) as http,
    ):

        def healthy() -> bool:
            try:
                return http.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(healthy, timeout=60), (tmp_path / "api.log").read_text()
        yield Platform(container, http, simulator)
    container.close()


def difference(a: pyvips.Image, b: pyvips.Image) -> float:
    """Mean absolute difference per channel value (0..255) of two same-sized images."""
    return float((a[:3].cast("float") - b[:3].cast("float")).abs().avg())


def test_an_upload_upscaled_is_the_input_twice_as_large(platform: Platform) -> None:
    headers = platform.user("upscaler@example.com")
    source = picture("a harbour at noon", 3, 256, 192)
    upload = platform.upload(headers, source.write_to_buffer(".png"))
    unrelated = picture("a forest at night", 4, 256, 192)
    for model in ("real-esrgan", "clarity-upscaler"):  # a link fetched: predictions, queue
        body = {"model": model, "params": {"image": f"upload:{upload['id']}", "scale": 2}}
        done = platform.generate(headers, body)
        result = platform.image(headers, done)
        assert (result.width, result.height) == (512, 384), model
        back = result.resize(0.5, kernel="lanczos3")  # the same size as the input again
        assert difference(back, source) < 10 < difference(back, unrelated), model
        assert done["params"]["image"] == f"upload:{upload['id']}"


def test_a_generation_edited_with_and_without_a_mask_and_the_cache_by_content(
    platform: Platform,
) -> None:
    headers = platform.user("editor@example.com")
    first = platform.generate(
        headers,
        {"model": "sim-instant", "prompt": "a lighthouse", "params": {"width": 512, "height": 512}},
    )
    original = platform.image(headers, first)
    edit = {
        "model": "flux-kontext",  # a link fetched (predictions)
        "prompt": "make it stormy",
        "params": {"image": f"generation:{first['id']}", "seed": 9},
    }
    edited = platform.generate(headers, edit)
    result = platform.image(headers, edited)
    assert (result.width, result.height) == (512, 512)
    prompt_alone = picture("make it stormy", 9, 512, 512)
    # changed, yet far nearer the input than what the prompt alone would make
    assert 1 < difference(result, original) < difference(prompt_alone, original) / 2
    assert platform.generate(headers, edit)["served_from_cache"]  # the same input again
    other = platform.upload(headers, render("a lighthouse", 8, 512, 512))
    other_edit = {**edit, "params": {"image": f"upload:{other['id']}", "seed": 9}}
    assert not platform.generate(headers, other_edit)["served_from_cache"]  # other content

    # base64 in the body (images), with a mask: only its transparent half may change
    source = picture("a meadow", 5, 1024, 1024)
    white = pyvips.Image.black(1024, 1024) + 255
    alpha = pyvips.Image.black(512, 1024).join(pyvips.Image.black(512, 1024) + 255, "horizontal")
    mask = white.bandjoin([white, white, alpha]).cast("uchar").copy(interpretation="srgb")
    image_ref = platform.upload(headers, source.write_to_buffer(".png"))["id"]
    mask_ref = platform.upload(headers, mask.write_to_buffer(".png"))["id"]
    masked = {
        "model": "gpt-image-edit",
        "prompt": "add a rainbow",
        "params": {"image": f"upload:{image_ref}", "mask": f"upload:{mask_ref}"},
    }
    result = platform.image(headers, platform.generate(headers, masked))
    assert (result.width, result.height) == (1024, 1024)
    assert difference(result.crop(512, 0, 512, 1024), source.crop(512, 0, 512, 1024)) == 0
    assert difference(result.crop(0, 0, 512, 1024), source.crop(0, 0, 512, 1024)) > 1


def test_inputs_that_are_not_the_callers_to_use_are_refused(platform: Platform) -> None:
    owner = platform.user("owner@example.com")
    stranger = platform.user("stranger@example.com")
    upload = platform.upload(owner, picture("a cat", 1, 256, 256).write_to_buffer(".png"))
    upscale = {"model": "real-esrgan", "params": {"image": f"upload:{upload['id']}"}}
    assert platform.refused(stranger, upscale) == "params.image"
    assert platform.http.get(upload["url"], headers=stranger).status_code == 404
    stored = platform.http.get(upload["url"], headers=owner)
    assert hashlib.sha256(stored.content).hexdigest() == upload["sha256"]

    fault = httpx.post(f"{platform.simulator}/_sim/faults/moderation", json={"nsfw_score": 0.97})
    assert fault.status_code == 200
    body = {"model": "sim-instant", "prompt": "a beach", "params": {"width": 256, "height": 256}}
    blocked = platform.generate(owner, body)
    httpx.delete(f"{platform.simulator}/_sim/faults")
    assert blocked["status"] == "blocked"
    edit = {
        "model": "flux-kontext",
        "prompt": "x",
        "params": {"image": f"generation:{blocked['id']}"},
    }
    assert platform.refused(owner, edit) == "params.image"
    assert platform.refused(owner, {"model": "flux-kontext", "prompt": "x"}) == "params.image"

    png = {"Content-Type": "image/png", **owner}
    assert platform.http.post("/v1/uploads", content=bomb(), headers=png).status_code == 413
    assert (
        platform.http.post("/v1/uploads", content=b"not an image", headers=png).status_code == 422
    )
