"""Post-processing and moderation end to end: the API, the worker running the pyvips pipeline,
the simulator as provider and as classifier (over HTTP), the ledger, and the rescreen command."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
import pyvips
from litestar.testing import TestClient

from infrastructure.imaging.pipeline import social_size
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from interfaces.http.app import create_app
from tests.e2e.test_generations import finished, user, wait_funded_projection
from tests.support.platform import platform_processes, with_simulator
from tests.support.processes import ROOT, child_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KINDS = ("original", "thumb", "preview", "social", "full", "modern")
VIDEO_KINDS = ("original", "thumb", "poster")


@pytest.fixture
def platform(settings: Settings, simulator: str, tmp_path: Path) -> Iterator[Container]:
    settings = with_simulator(replace(settings, projection_batch=200), simulator)
    container = build(settings)
    for name in ("ledger", "generations"):
        container.projection(name).start()
    with platform_processes(settings, tmp_path):
        yield container
    container.close()


@pytest.fixture
def client(platform: Container) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(platform)) as client:
        yield client


def fault(simulator: str, provider: str, **faults: Any) -> None:
    assert httpx.post(f"{simulator}/_sim/faults/{provider}", json=faults).status_code == 200


def generate(client: TestClient[Any], headers: dict[str, str], prompt: str) -> dict[str, Any]:
    body = {"model": "sim-instant", "prompt": prompt, "params": {"width": 640, "height": 360}}
    accepted = client.post("/v1/generations", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    return finished(client, headers, accepted.json()["id"])


def ledger(client: TestClient[Any], headers: dict[str, str]) -> list[dict[str, Any]]:
    return list(client.get("/v1/credits/ledger", headers=headers).json()["items"])


def settled(client: TestClient[Any], headers: dict[str, str]) -> dict[str, Any]:
    assert wait_for(lambda: ledger(client, headers)[0]["kind"] in ("capture", "release"))
    return ledger(client, headers)[0]


def assets_refused(
    client: TestClient[Any],
    headers: dict[str, str],
    generation_id: str,
    kinds: tuple[str, ...] = KINDS,
) -> None:
    for kind in kinds:
        response = client.get(f"/v1/generations/{generation_id}/assets/{kind}", headers=headers)
        assert response.status_code == 404, kind
        assert response.headers["content-type"].startswith("application/problem+json")


def test_a_completed_image_carries_its_artefacts_blurhash_and_scores(
    client: TestClient[Any], platform: Container
) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    generation = generate(client, headers, "a quiet harbour")
    assert generation["status"] == "completed", generation
    shown = {d["kind"] for d in generation["result"]["derivatives"]}
    assert {"thumb", "preview"} <= shown  # shown with what a viewer needs; the rest follow
    # asked for at once, the full-size image is served (the request waits while it is made)
    early = client.get(f"/v1/generations/{generation['id']}/assets/full", headers=headers)
    assert early.status_code == 200, early.text
    assert early.headers["content-type"] == "image/webp"

    def derived() -> dict[str, Any]:
        path = f"/v1/generations/{generation['id']}"
        return dict(client.get(path, headers=headers).json()["result"])

    assert wait_for(lambda: len(derived()["derivatives"]) == len(KINDS))
    result = derived()
    assert result["blurhash"]
    assert 0 <= result["quality_score"] <= 1
    assert 0 <= result["nsfw_score"] < 0.8
    made = {d["kind"]: d for d in result["derivatives"]}
    assert sorted(made) == sorted(KINDS)  # six image artefacts, the original among them
    assert (made["thumb"]["width"], made["thumb"]["height"]) == (256, 144)
    assert (made["preview"]["width"], made["preview"]["height"]) == (512, 288)
    size = social_size(result["width"], result["height"])
    assert (made["social"]["width"], made["social"]["height"]) == size
    for kind in ("full", "modern", "original"):
        assert (made[kind]["width"], made[kind]["height"]) == (640, 360), kind
    formats = {"social": "jpeg", "original": "png", "modern": made["modern"]["format"]}
    for kind, derivative in made.items():
        assert derivative["format"] == formats.get(kind, "webp"), kind
        response = client.get(derivative["url"], headers=headers)
        assert response.status_code == 200, kind
        assert len(response.content) == derivative["bytes"]
        image = pyvips.Image.new_from_buffer(response.content, "")
        assert (image.width, image.height) == (derivative["width"], derivative["height"])
        assert "exif-data" not in image.get_fields()
    assert made["original"]["url"] == result["url"]
    original = client.get(result["url"], headers=headers)
    assert original.status_code == 200
    assert original.headers["content-type"] == "image/png"


def test_a_video_is_served_as_a_metadata_free_mp4_with_its_poster_and_thumbnail(
    client: TestClient[Any], platform: Container, simulator: str
) -> None:
    fault(simulator, "fal", latency_scale=0.005)  # kling-video's minute in a fraction of a second
    headers = user(platform)
    wait_funded_projection(client, headers)
    body = {"model": "kling-video", "prompt": "a fox in the snow", "params": {"seed": 5}}
    accepted = client.post("/v1/generations", json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    generation = finished(client, headers, accepted.json()["id"])
    assert generation["status"] == "completed", generation
    assert generation["charged_credits"] == "2.5000"  # five seconds at 0.5
    result = generation["result"]
    assert (result["width"], result["height"], result["format"]) == (1280, 720, "mp4")
    served = client.get(result["url"], headers=headers)
    assert served.status_code == 200
    assert served.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(served.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = list(container.decode(stream))  # every frame decodes
        assert (frames[0].width, frames[0].height) == (1280, 720)
        assert container.duration == 5 * av.time_base
        tags = {**container.metadata, **stream.metadata}
    assert len(frames) == 10
    assert not {"title", "comment", "creation_time", "location", "encoder"} & set(tags), tags
    assert b"a fox in the snow" not in served.content
    made = {d["kind"]: d for d in result["derivatives"]}
    assert sorted(made) == sorted(VIDEO_KINDS)
    assert (made["original"]["url"], made["original"]["bytes"]) == (
        result["url"],
        len(served.content),
    )
    for kind, box in (("poster", (1280, 720)), ("thumb", (256, 144))):
        assert (made[kind]["width"], made[kind]["height"], made[kind]["format"]) == (*box, "webp")
        response = client.get(made[kind]["url"], headers=headers)
        assert response.status_code == 200, kind
        assert len(response.content) == made[kind]["bytes"]
        image = pyvips.Image.new_from_buffer(response.content, "")
        assert (image.width, image.height) == box

    fault(simulator, "moderation", nsfw_score=0.97)  # the poster is judged: a blocked video
    again = client.post(
        "/v1/generations", json={**body, "prompt": "a fox at dusk"}, headers=headers
    )
    blocked = finished(client, headers, again.json()["id"])
    assert blocked["status"] == "blocked", blocked
    assets_refused(client, headers, blocked["id"], VIDEO_KINDS)


def test_a_prompt_hitting_a_rule_is_refused_and_nothing_is_charged(
    client: TestClient[Any], platform: Container
) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    before = client.get("/v1/credits", headers=headers).json()
    body = {"model": "sim-instant", "prompt": "a GORY battlefield", "params": {"seed": 1}}
    for path in ("/v1/generations/quote", "/v1/generations"):
        refused = client.post(path, json=body, headers=headers)
        assert refused.status_code == 422
        problem = refused.json()
        assert problem["code"] == "content_policy"
        assert problem["rule"] == "gore"
        assert problem["rules_version"] == platform.moderation.rules.version
        assert refused.headers["content-type"].startswith("application/problem+json")
    assert client.get("/v1/generations", headers=headers).json()["items"] == []
    assert client.get("/v1/credits", headers=headers).json() == before


def test_the_provider_s_safety_flag_blocks_and_the_policy_decides_the_bill(
    client: TestClient[Any], platform: Container, simulator: str
) -> None:
    fault(simulator, "replicate", reject_content="forbidden")
    headers = user(platform)
    wait_funded_projection(client, headers)
    generation = generate(client, headers, "something forbidden")
    assert generation["status"] == "blocked", generation
    assert generation["result"] is None
    assert generation["error"]["code"] == "content_blocked"
    assets_refused(client, headers, generation["id"])
    entry = settled(client, headers)
    assert entry["kind"] == "release"  # the default policy waives a blocked generation
    assert "blocked by provider" in entry["note"]
    assert "billing policy: waive" in entry["note"]


def test_a_classifier_verdict_blocks_for_everyone_and_is_recorded_with_its_version(
    client: TestClient[Any], platform: Container, simulator: str
) -> None:
    fault(simulator, "moderation", nsfw_score=0.97)
    headers = user(platform)
    wait_funded_projection(client, headers)
    generation = generate(client, headers, "a beach at noon")
    assert generation["status"] == "blocked", generation
    assets_refused(client, headers, generation["id"])
    other = user(platform, credits="1")
    assets_refused(client, other, generation["id"])
    stored = platform.generations.generation(None, generation["id"])
    assert stored.moderation == {
        "layer": "classifier",
        "reason": "nsfw score 0.9700 is at or above the threshold 0.8",
        "version": "sim-nsfw-2026.11",
        "score": 0.97,
    }
    assert stored.processed is not None  # the artefacts exist; they are just never served
    assert "blocked by classifier (sim-nsfw-2026.11)" in settled(client, headers)["note"]


def test_rescreen_with_a_stricter_threshold_blocks_an_earlier_image_and_records_why(
    client: TestClient[Any], platform: Container
) -> None:
    headers = user(platform)
    wait_funded_projection(client, headers)
    since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    generation = generate(client, headers, "a red kite over hills")
    assert generation["status"] == "completed"
    score = generation["result"]["nsfw_score"]
    stricter = max(0.0, round(score - 0.0001, 4))

    def rescreen(threshold: float) -> dict[str, Any]:
        run = subprocess.run(
            [sys.executable, "-m", "interfaces.cli", "moderation", "rescreen", "--since", since,
             "--threshold", str(threshold), "--json"],
            env=child_env(platform.settings), cwd=ROOT, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        return dict(json.loads(run.stdout))

    assert rescreen(0.8)["changed"] == []  # the configured threshold: nothing changes
    report = rescreen(stricter)
    assert report["changed"] == [
        {
            "generation_id": generation["id"],
            "before": "completed",
            "after": "blocked",
            "score": score,
            "classifier": "sim-nsfw-2026.11",
            "threshold": stricter,
        }
    ]
    blocked = finished(client, headers, generation["id"])
    assert blocked["status"] == "blocked"
    assets_refused(client, headers, generation["id"])
    stored = platform.generations.generation(None, generation["id"])
    assert stored.moderation["layer"] == "rescreen"
    assert f"threshold {stricter}" in stored.moderation["reason"]
    assert ledger(client, headers)[0]["kind"] == "capture"  # billing settled before stays so
    assert rescreen(stricter)["changed"] == []  # a second run records nothing new
