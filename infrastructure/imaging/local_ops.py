"""A workflow's local operations on pixels (pyvips): encoded images in, one PNG out.

The parameters, their defaults and every output size are :mod:`application.workflow_ops`'
(checked and computed there, so the size a graph is quoted with is the size made here). Inputs
are decoded as 8-bit sRGB, alpha kept; only PNG, JPEG, WebP and AVIF/HEIF are read (known by
their signature, so no other loader runs). The output is a PNG without metadata.

    resize          Lanczos (libvips' thumbnail, which premultiplies alpha), then a centred crop
                    for ``cover``
    crop            the rectangle, which must lie inside the image
    colour_correct  on the colour bands, alpha untouched, in this order:
                    v * contrast around mid-grey + brightness * 255; saturation as a mix with
                    the pixel's luma (Rec. 709); gamma as 255 * (v / 255) ^ (1 / gamma), so
                    gamma > 1 lightens the mid-tones
    composite       ``overlay`` over ``base`` at (x, y), clipped to the base, its alpha times
                    ``opacity``; alpha in the output only when the base has it
    grayscale       luminance (libvips' B_W) back in three equal bands, alpha kept
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pyvips

from application.workflow_ops import (
    INPUT_PORTS,
    LOCAL_OPS,
    LocalOpError,
    LocalOutput,
    checked,
    output_size,
    resize_plan,
)
from infrastructure.imaging.pipeline import to_srgb

__all__ = ["LOCAL_OPS", "LocalOpError", "LocalOutput", "output_size", "run_local_op"]

MEDIA_TYPE = "image/png"
_LUMA = (0.2126, 0.7152, 0.0722)


def run_local_op(op: str, params: Mapping[str, Any], images: Mapping[str, bytes]) -> LocalOutput:
    """Runs ``op`` on ``images`` (encoded, by input port: ``image``; ``base`` and ``overlay``
    for ``composite``). Raises :class:`LocalOpError` naming the field for bad parameters, a
    missing or undecodable input and a crop outside its image."""
    values = checked(op, params)
    for port in images:
        if port not in INPUT_PORTS[op]:
            raise LocalOpError(f"inputs.{port}", f"not an input of {op}")
    decoded = {port: _decode(port, images.get(port)) for port in INPUT_PORTS[op]}
    size = output_size(op, values, {port: (i.width, i.height) for port, i in decoded.items()})
    result = _OPS[op](values, decoded)
    if (result.width, result.height) != size:  # pragma: no cover - output_size is the contract
        raise AssertionError(f"{op} made {result.width}x{result.height}, not {size}")
    data = result.pngsave_buffer(keep=pyvips.enums.ForeignKeep.NONE)
    return LocalOutput(bytes(data), result.width, result.height, MEDIA_TYPE)


# -- decoding ------------------------------------------------------------------------------


def _loader(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "pngload_buffer"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpegload_buffer"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webpload_buffer"
    if data[4:8] == b"ftyp":
        return "heifload_buffer"
    return None


def _decode(port: str, data: bytes | None) -> pyvips.Image:
    """8-bit sRGB, three bands and maybe alpha, decoded whole (a broken file fails here)."""
    if data is None:
        raise LocalOpError(f"inputs.{port}", "is missing")
    loader = _loader(data)
    if loader is None:
        raise LocalOpError(f"inputs.{port}", "not a PNG, JPEG, WebP or AVIF image")
    try:
        image: pyvips.Image = getattr(pyvips.Image, loader)(data, fail_on="error")
        return to_srgb(image).copy_memory()
    except pyvips.Error:
        raise LocalOpError(f"inputs.{port}", "does not decode as an image") from None


def _split(image: pyvips.Image) -> tuple[pyvips.Image, pyvips.Image | None]:
    """(colour bands, alpha or ``None``)."""
    if image.hasalpha():
        return image.extract_band(0, n=image.bands - 1), image[image.bands - 1]
    return image, None


def _join(colour: pyvips.Image, alpha: pyvips.Image | None) -> pyvips.Image:
    """Colour and alpha (any format: clamped and rounded), as 8-bit sRGB."""
    joined = colour if alpha is None else colour.bandjoin(alpha)
    return joined.clamp(min=0, max=255).rint().cast("uchar").copy(interpretation="srgb")


# -- the operations ------------------------------------------------------------------------

Images = Mapping[str, pyvips.Image]


def _resize(values: Mapping[str, Any], images: Images) -> pyvips.Image:
    image = images["image"]
    (scaled_w, scaled_h), (width, height) = resize_plan(values, image.width, image.height)
    if (scaled_w, scaled_h) != (image.width, image.height):
        image = image.thumbnail_image(scaled_w, height=scaled_h, size="force")
    if (width, height) != (scaled_w, scaled_h):
        image = image.crop((scaled_w - width) // 2, (scaled_h - height) // 2, width, height)
    return image


def _crop(values: Mapping[str, Any], images: Images) -> pyvips.Image:
    x, y, width, height = (int(values[name]) for name in ("x", "y", "width", "height"))
    return images["image"].crop(x, y, width, height)


def _colour_correct(values: Mapping[str, Any], images: Images) -> pyvips.Image:
    colour, alpha = _split(images["image"])
    contrast, brightness = float(values["contrast"]), float(values["brightness"])
    saturation, gamma = float(values["saturation"]), float(values["gamma"])
    colour = (colour.cast("float") - 128) * contrast + (128 + brightness * 255)
    if saturation != 1:
        luma = colour[0] * _LUMA[0] + colour[1] * _LUMA[1] + colour[2] * _LUMA[2]
        colour = (colour - luma) * saturation + luma
    if gamma != 1:
        colour = (colour.clamp(min=0, max=255) / 255) ** (1 / gamma) * 255
    return _join(colour, alpha)


def _composite(values: Mapping[str, Any], images: Images) -> pyvips.Image:
    base, overlay = images["base"], images["overlay"]
    x, y, opacity = int(values["x"]), int(values["y"]), float(values["opacity"])
    outside = x >= base.width or y >= base.height or x + overlay.width <= 0
    if outside or y + overlay.height <= 0 or opacity == 0:
        return base  # nothing of the overlay shows
    colour, alpha = _split(overlay)
    alpha = alpha if alpha is not None else pyvips.Image.black(overlay.width, overlay.height) + 255
    overlay = _join(colour, alpha * opacity)
    # a transparent canvas of the base's size with the overlay on it, clipped at the edges
    placed = overlay.embed(x, y, base.width, base.height, background=[0, 0, 0, 0])
    opaque = not base.hasalpha()
    merged = (base.bandjoin(255) if opaque else base).composite2(placed, "over")
    return _join(merged.extract_band(0, n=3), None if opaque else merged[3])


def _grayscale(_values: Mapping[str, Any], images: Images) -> pyvips.Image:
    colour, alpha = _split(images["image"])
    grey = colour.colourspace("b-w")
    return _join(grey.bandjoin([grey, grey]), alpha)


_OPS: Mapping[str, Callable[[Mapping[str, Any], Images], pyvips.Image]] = {
    "resize": _resize,
    "crop": _crop,
    "colour_correct": _colour_correct,
    "composite": _composite,
    "grayscale": _grayscale,
}
