"""A workflow's local operations: each one on small generated images (real pyvips pixels), their
parameter checks, and the sizes the engine infers without pixels against the sizes made."""

from __future__ import annotations

from typing import Any

import pytest
import pyvips

from application.errors import InvalidRequest
from application.workflow_ops import INPUT_PORTS, LOCAL_OPS, check_params
from infrastructure.imaging.local_ops import LocalOpError, output_size, run_local_op


def solid(width: int, height: int, rgb: tuple[int, int, int], alpha: int | None = None) -> bytes:
    image = (pyvips.Image.black(width, height) + list(rgb)).cast("uchar")
    if alpha is not None:
        image = image.bandjoin(alpha)
    return bytes(image.copy(interpretation="srgb").write_to_buffer(".png"))


def ramp(width: int = 40, height: int = 20, *, alpha: bool = False) -> bytes:
    """Red rises with x, green with y, blue is x + y: every pixel tells where it came from."""
    xy = pyvips.Image.xyz(width, height)
    image = (xy[0] * 5).bandjoin([xy[1] * 10, xy[0] + xy[1]])
    if alpha:
        image = image.bandjoin(200)
    return bytes(image.cast("uchar").copy(interpretation="srgb").write_to_buffer(".png"))


def decoded(data: bytes) -> pyvips.Image:
    image = pyvips.Image.new_from_buffer(data, "")
    assert image.get("vips-loader") == "pngload_buffer"
    return image


def pixel(data: bytes, x: int, y: int) -> list[float]:
    values: list[float] = decoded(data)(x, y)
    return values


# -- each operation ------------------------------------------------------------------------


def test_resize_contain_keeps_the_ratio_and_never_enlarges_unless_asked() -> None:
    made = run_local_op("resize", {"width": 20}, {"image": ramp(40, 20)})
    assert (made.width, made.height, made.media_type) == (20, 10, "image/png")
    assert (decoded(made.data).width, decoded(made.data).height) == (20, 10)
    kept = run_local_op("resize", {"width": 80, "height": 80}, {"image": ramp(40, 20)})
    assert (kept.width, kept.height) == (40, 20)
    grown = run_local_op(
        "resize", {"width": 80, "height": 80, "enlarge": True}, {"image": ramp(40, 20)}
    )
    assert (grown.width, grown.height) == (80, 40)


def test_resize_cover_fills_the_box_cropping_around_the_centre() -> None:
    made = run_local_op("resize", {"width": 10, "height": 10, "fit": "cover"}, {"image": ramp()})
    assert (made.width, made.height) == (10, 10)
    # 40x20 scaled to 20x10, then 5 columns cut each side: the output's x 0 is about the
    # source's x 10.5, whose red is 5 x 10.5 (a ramp survives a resize), its x 9 about x 28.5
    left, right = pixel(made.data, 0, 5)[0], pixel(made.data, 9, 5)[0]
    assert 40 <= left <= 60
    assert 135 <= right <= 155


def test_resize_fill_stretches_to_the_box() -> None:
    made = run_local_op("resize", {"width": 10, "height": 15, "fit": "fill"}, {"image": ramp()})
    assert (made.width, made.height) == (10, 15)


def test_crop_picks_the_rectangle_asked_for() -> None:
    made = run_local_op("crop", {"x": 7, "y": 3, "width": 5, "height": 4}, {"image": ramp()})
    assert (made.width, made.height) == (5, 4)
    assert pixel(made.data, 0, 0) == [35, 30, 10]  # the source's (7, 3)
    assert pixel(made.data, 4, 3) == [55, 60, 17]  # the source's (11, 6)


def test_colour_correct_with_defaults_changes_nothing_and_keeps_alpha() -> None:
    source = ramp(alpha=True)
    same = run_local_op("colour_correct", {}, {"image": source})
    assert decoded(same.data).bands == 4
    assert (decoded(same.data) == decoded(source)).min() == 255  # every band of every pixel


def test_brightness_contrast_saturation_and_gamma_move_the_pixels() -> None:
    source = solid(6, 6, (200, 60, 20), alpha=90)
    mean = decoded(source).extract_band(0, n=3).avg()

    def corrected(**params: float) -> list[float]:
        return pixel(run_local_op("colour_correct", params, {"image": source}).data, 2, 2)

    brighter = corrected(brightness=0.2)
    assert sum(brighter[:3]) / 3 > mean
    assert brighter == [251, 111, 71, 90]  # + 0.2 x 255 = 51 on each colour band; alpha kept
    assert corrected(contrast=2)[:3] == [255, 0, 0]  # (v - 128) x 2 + 128, clamped
    grey = corrected(saturation=0)
    assert grey[0] == grey[1] == grey[2] == 87  # Rec. 709 luma of (200, 60, 20)
    lighter = corrected(gamma=2)
    assert lighter[1] > 60  # mid-tones lighten
    assert lighter[3] == 90


def test_composite_mixes_half_and_half_at_opacity_one_half_and_clips() -> None:
    base = solid(8, 6, (0, 0, 255))
    overlay = solid(4, 4, (255, 0, 0), alpha=255)
    made = run_local_op(
        "composite", {"x": -2, "y": 4, "opacity": 0.5}, {"base": base, "overlay": overlay}
    )
    assert (made.width, made.height) == (8, 6)  # the base's
    assert decoded(made.data).bands == 3  # an opaque base stays opaque
    red, green, blue = pixel(made.data, 0, 5)  # under the overlay's visible part
    assert red == pytest.approx(128, abs=2)
    assert green == 0
    assert blue == pytest.approx(127, abs=2)
    assert pixel(made.data, 2, 5) == [0, 0, 255]  # right of it: the base
    assert pixel(made.data, 0, 3) == [0, 0, 255]  # above it
    away = run_local_op("composite", {"x": 8}, {"base": base, "overlay": overlay})
    assert decoded(away.data).avg() == decoded(base).avg()  # wholly outside: the base alone


def test_composite_respects_the_overlays_alpha_and_keeps_the_bases() -> None:
    base = solid(4, 4, (0, 0, 0), alpha=255)
    overlay = solid(2, 2, (255, 255, 255), alpha=0)
    made = run_local_op("composite", {"x": 1, "y": 1}, {"base": base, "overlay": overlay})
    assert pixel(made.data, 1, 1) == [0, 0, 0, 255]  # a transparent overlay shows nothing


def test_grayscale_makes_equal_bands_and_keeps_alpha() -> None:
    made = run_local_op("grayscale", {}, {"image": ramp(alpha=True)})
    image = decoded(made.data)
    assert image.bands == 4
    assert (image[0] == image[1]).min() == 255
    assert (image[1] == image[2]).min() == 255
    assert image[3].min() == image[3].max() == 200
    assert image[0].max() > image[0].min()  # grey, not flat


def test_the_output_is_a_png_without_metadata() -> None:
    tagged = pyvips.Image.new_from_buffer(ramp(), "").copy()
    tagged.set_type(pyvips.GValue.gstr_type, "png-comment-0-Comment", "taken at home")
    made = run_local_op("grayscale", {}, {"image": tagged.write_to_buffer(".png")})
    assert made.data.startswith(b"\x89PNG")
    assert not [f for f in decoded(made.data).get_fields() if f.startswith(("png-comment", "exif"))]


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"junk" * 20, b"<svg/>"]
)
def test_an_input_that_does_not_decode_is_refused_naming_it(data: bytes) -> None:
    with pytest.raises(LocalOpError) as refused:
        run_local_op("grayscale", {}, {"image": data})
    assert refused.value.field == "inputs.image"
    assert isinstance(refused.value, InvalidRequest)  # answered 422 by the HTTP edge


def test_a_missing_or_unknown_input_is_refused_naming_it() -> None:
    with pytest.raises(LocalOpError) as missing:
        run_local_op("composite", {}, {"base": ramp()})
    assert missing.value.field == "inputs.overlay"
    with pytest.raises(LocalOpError) as unknown:
        run_local_op("grayscale", {}, {"image": ramp(), "mask": ramp()})
    assert unknown.value.field == "inputs.mask"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"x": 40, "y": 0, "width": 1, "height": 1}, "params.x"),
        ({"x": 0, "y": 20, "width": 1, "height": 1}, "params.y"),
        ({"x": 30, "y": 0, "width": 11, "height": 1}, "params.width"),
        ({"x": 0, "y": 10, "width": 1, "height": 11}, "params.height"),
    ],
)
def test_a_crop_outside_the_image_is_refused_naming_the_field(
    params: dict[str, int], field: str
) -> None:
    with pytest.raises(LocalOpError) as refused:
        run_local_op("crop", params, {"image": ramp(40, 20)})
    assert refused.value.field == field


# -- parameter checks ----------------------------------------------------------------------


def test_an_unknown_op_is_one_problem_on_op() -> None:
    problems = check_params("sharpen", {})
    assert [field for field, _ in problems] == ["op"]


def test_an_unknown_parameter_is_named() -> None:
    assert check_params("grayscale", {"amount": 1}) == [
        ("params.amount", "not a parameter of grayscale")
    ]


@pytest.mark.parametrize(
    ("op", "params", "field"),
    [
        ("resize", {"width": True}, "params.width"),  # a bool is not an integer
        ("resize", {"width": 10.5}, "params.width"),
        ("resize", {"width": "10"}, "params.width"),
        ("resize", {"width": 10, "enlarge": 1}, "params.enlarge"),
        ("resize", {"width": 10, "fit": "stretch"}, "params.fit"),
        ("colour_correct", {"gamma": "2"}, "params.gamma"),
        ("colour_correct", {"contrast": False}, "params.contrast"),
        ("composite", {"x": 1.0}, "params.x"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(op: str, params: dict[str, Any], field: str) -> None:
    assert [found for found, _ in check_params(op, params)] == [field]


@pytest.mark.parametrize(
    ("op", "params", "field"),
    [
        ("resize", {"width": 0}, "params.width"),
        ("resize", {"height": 16385}, "params.height"),
        ("crop", {"x": -1, "y": 0, "width": 1, "height": 1}, "params.x"),
        ("colour_correct", {"brightness": 1.5}, "params.brightness"),
        ("colour_correct", {"saturation": -0.1}, "params.saturation"),
        ("colour_correct", {"gamma": 0.05}, "params.gamma"),
        ("colour_correct", {"contrast": float("nan")}, "params.contrast"),
        ("composite", {"opacity": 1.01}, "params.opacity"),
    ],
)
def test_a_value_out_of_range_is_named(op: str, params: dict[str, Any], field: str) -> None:
    assert [found for found, _ in check_params(op, params)] == [field]


def test_missing_required_parameters_are_each_named() -> None:
    assert [field for field, _ in check_params("crop", {"x": 1})] == [
        "params.y",
        "params.width",
        "params.height",
    ]
    assert [field for field, _ in check_params("resize", {"fit": "cover"})] == ["params.width"]


def test_good_parameters_have_no_problems_and_run_refuses_bad_ones() -> None:
    assert check_params("resize", {"height": 5, "fit": "fill", "enlarge": True}) == []
    assert check_params("composite", {"x": -3, "y": 2, "opacity": 0}) == []
    assert check_params("colour_correct", {"brightness": -1, "gamma": None}) == []
    with pytest.raises(LocalOpError) as refused:
        run_local_op("resize", {"width": True}, {"image": ramp()})
    assert refused.value.field == "params.width"


# -- static sizes agree with the pixels ----------------------------------------------------

CASES: list[tuple[str, dict[str, Any]]] = [
    *(
        ("resize", {**box, "fit": fit, "enlarge": enlarge})
        for box in (
            {"width": 13},
            {"height": 31},
            {"width": 9, "height": 30},
            {"width": 64, "height": 7},
        )
        for fit in ("contain", "cover", "fill")
        for enlarge in (False, True)
    ),
    ("crop", {"x": 0, "y": 0, "width": 40, "height": 20}),
    ("crop", {"x": 39, "y": 19, "width": 1, "height": 1}),
    ("crop", {"x": 5, "y": 2, "width": 17, "height": 3}),
    ("colour_correct", {}),
    ("colour_correct", {"brightness": -0.5, "contrast": 3, "saturation": 2.5, "gamma": 0.3}),
    ("composite", {}),
    ("composite", {"x": -5, "y": 15, "opacity": 0.25}),
    ("composite", {"x": -30, "y": 15}),
    ("composite", {"x": 100, "y": 100}),
    ("grayscale", {}),
]


@pytest.mark.parametrize(("op", "params"), CASES)
def test_output_size_is_the_size_the_operation_makes(op: str, params: dict[str, Any]) -> None:
    images = {"image": ramp(40, 20), "base": ramp(40, 20), "overlay": ramp(11, 23, alpha=True)}
    given = {port: images[port] for port in INPUT_PORTS[op]}
    sizes = {port: (decoded(d).width, decoded(d).height) for port, d in given.items()}
    made = run_local_op(op, params, given)
    assert output_size(op, params, sizes) == (made.width, made.height)
    assert (decoded(made.data).width, decoded(made.data).height) == (made.width, made.height)


def test_every_op_is_covered_and_sizes_follow_the_examples() -> None:
    assert {op for op, _ in CASES} == set(LOCAL_OPS)
    assert output_size("resize", {"width": 200}, {"image": (1000, 500)}) == (200, 100)
    assert output_size("composite", {"x": 5}, {"base": (640, 480), "overlay": (10, 10)}) == (
        640,
        480,
    )
    with pytest.raises(LocalOpError) as too_big:
        output_size("resize", {"width": 10000, "enlarge": True}, {"image": (1000, 1000)})
    assert too_big.value.field == "params.width"
