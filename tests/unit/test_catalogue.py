from __future__ import annotations

import tomllib

import msgspec
import pytest

from application.catalogue import (
    CATALOGUE_FILE,
    Catalogue,
    CatalogueError,
    UnknownModel,
    default_catalogue,
)
from application.normalise import GenerationRequest, InvalidRequest, cost_units, normalise
from domain.credits import to_units

CATALOGUE = default_catalogue()


def ask(model: str, prompt: str = "a red fox", **params: object) -> GenerationRequest:
    return GenerationRequest(model=model, prompt=prompt, params=dict(params))


def test_catalogue_covers_kinds_and_wire_styles() -> None:
    models = list(CATALOGUE)
    assert len(models) == len(tomllib.loads(CATALOGUE_FILE.read_text())["model"])  # every one
    assert {m.kind for m in models} == {"image", "video", "upscale", "edit", "remove_background"}
    assert {m.wire for m in models} == {"predictions", "queue", "images"}
    with pytest.raises(UnknownModel):
        CATALOGUE.get("nope")


def test_a_bad_entry_fails_at_load_naming_it() -> None:
    spec = CATALOGUE.get("flux-schnell")
    with pytest.raises(CatalogueError, match="unknown fallbacks"):
        Catalogue([msgspec.structs.replace(spec, fallbacks=("ghost",))])


def test_pixels_round_to_the_models_multiple_and_clamp() -> None:
    done = normalise(CATALOGUE.get("flux-schnell"), ask("flux-schnell", width=1000, height=700))
    assert (done.params["width"], done.params["height"]) == (992, 704)
    assert done.warnings == ("1000x700 adjusted to 992x704 for flux-schnell",)
    big = normalise(CATALOGUE.get("flux-schnell"), ask("flux-schnell", width=4000, height=4000))
    assert big.params["width"] <= 1440
    assert big.params["width"] * big.params["height"] <= 2_073_600
    assert big.params["width"] % 32 == 0


def test_aspect_ratio_becomes_pixels_and_pixels_become_ratio() -> None:
    wide = normalise(CATALOGUE.get("flux-dev"), ask("flux-dev", aspect_ratio="16:9"))
    w, h = wide.params["width"], wide.params["height"]
    assert w % 16 == 0
    assert h % 16 == 0
    assert abs(w / h - 16 / 9) < 0.05
    ratio = normalise(CATALOGUE.get("recraft-v3"), ask("recraft-v3", width=1920, height=1080))
    assert ratio.params["aspect_ratio"] == "16:9"
    with pytest.raises(InvalidRequest) as refused:
        normalise(CATALOGUE.get("recraft-v3"), ask("recraft-v3", aspect_ratio="21:9"))
    assert refused.value.field == "params.aspect_ratio"


def test_allowed_sizes_pick_the_nearest_shape() -> None:
    done = normalise(CATALOGUE.get("dall-e-3"), ask("dall-e-3", width=1600, height=900))
    assert (done.params["width"], done.params["height"]) == (1792, 1024)


def test_negative_prompt_and_seed_dropped_with_a_warning_when_unsupported() -> None:
    request = GenerationRequest(
        model="imagen-3", prompt="x", negative_prompt="blur", params={"seed": 5}
    )
    done = normalise(CATALOGUE.get("imagen-3"), request)
    assert done.negative_prompt is None
    assert "seed" not in done.params
    assert done.warnings == (
        "imagen-3 takes no negative prompt: it was dropped",
        "imagen-3 takes no seed: it was dropped",
    )


@pytest.mark.parametrize(
    ("model", "params", "field"),
    [
        ("flux-schnell", {"seed": -1}, "params.seed"),
        ("flux-schnell", {"seed": 2**40}, "params.seed"),
        ("flux-schnell", {"width": 512}, "params.height"),
        ("flux-schnell", {"width": "big", "height": 512}, "params.width"),
        ("flux-schnell", {"aspect_ratio": "wide"}, "params.aspect_ratio"),
        ("flux-schnell", {"steps": 1.5}, "params.steps"),
        ("flux-schnell", {"guidance": float("nan")}, "params.guidance"),
        ("flux-schnell", {"duration_s": 5}, "params.duration_s"),
        ("kling-video", {"duration_s": 7}, "params.duration_s"),
        ("real-esrgan", {"scale": 3}, "params.scale"),
        ("flux-schnell", {"colour": "red"}, "params.colour"),
    ],
)
def test_what_cannot_be_clamped_is_refused_naming_the_field(
    model: str, params: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        normalise(CATALOGUE.get(model), ask(model, **params))
    assert refused.value.field == field


def test_quotes_follow_the_pricing_unit() -> None:
    per_image = normalise(CATALOGUE.get("flux-schnell"), ask("flux-schnell"))
    assert per_image.cost_units == to_units("0.3")
    per_mp = normalise(CATALOGUE.get("flux-dev"), ask("flux-dev", width=1024, height=1024))
    # 0.9 credits per megapixel, 1024x1024 = 1.048576 MP: 0.9437184, rounded up to 0.9438
    assert per_mp.cost_units == 9438
    video = normalise(CATALOGUE.get("kling-video"), ask("kling-video", duration_s=10))
    assert video.cost_units == to_units(5)
    spec = CATALOGUE.get("flux-dev")
    assert cost_units(spec, 1000, 1000, None) == to_units("0.9")
    assert cost_units(spec, 1, 1, None) == 1  # a fraction of a unit rounds up, never down
