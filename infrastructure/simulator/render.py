"""Deterministic pictures from prompt, seed and size (same inputs, byte-identical output)."""

from __future__ import annotations

import hashlib

import pyvips

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
#: A background remover's colour distances (RGB, 0..441) from the border's mean colour: up to
#: the first a pixel is background (alpha 0), from the second foreground (255), a ramp between.
CUTOUT_NEAR, CUTOUT_FAR = 24.0, 56.0


def _palette(prompt: str, seed: int, width: int, height: int) -> tuple[list[int], list[int], int]:
    digest = hashlib.sha256(f"{prompt}|{seed}|{width}x{height}".encode()).digest()
    return list(digest[0:3]), list(digest[3:6]), int.from_bytes(digest[6:10], "big") >> 1


def picture(prompt: str, seed: int, width: int, height: int, frame: int = 0) -> pyvips.Image:
    """A gradient between two colours the prompt picks, rings, and seeded grain."""
    start, end, noise_seed = _palette(prompt, seed, width, height)
    xy = pyvips.Image.xyz(width, height)
    t = (xy[0] + xy[1] + frame * 24) / float(width + height)  # 0..1 along the diagonal
    channels = [t * (e - s) + s for s, e in zip(start, end, strict=True)]
    gradient = channels[0].bandjoin(channels[1:])
    cx, cy = width * (0.3 + (noise_seed % 40) / 100), height * (0.3 + (noise_seed % 37) / 100)
    distance = ((xy[0] - cx) ** 2 + (xy[1] - cy) ** 2) ** 0.5
    rings = (distance * 6 + frame * 45).sin() * 28  # pyvips trigonometry is in degrees
    grain = pyvips.Image.gaussnoise(width, height, sigma=6, mean=0, seed=noise_seed)
    image = (gradient + rings + grain).cast("uchar")
    return image.copy(interpretation="srgb")


def encode(image: pyvips.Image, fmt: str = "png") -> bytes:
    suffix = FORMATS.get(fmt, ".png")
    data: bytes = image.write_to_buffer(suffix, keep=pyvips.enums.ForeignKeep.NONE)
    return data


def render(prompt: str, seed: int, width: int, height: int, fmt: str = "png") -> bytes:
    return encode(picture(prompt, seed, width, height), fmt)


def preview(prompt: str, seed: int, width: int, height: int, progress: float) -> bytes:
    """What a streaming provider shows part-way: small, blurred less as it progresses."""
    small = picture(prompt, seed, width, height).thumbnail_image(256)
    sigma = max(0.3, 8 * (1 - progress))
    return encode(small.gaussblur(sigma).cast("uchar"), "jpeg")


def upscale(source: bytes, scale: int) -> bytes:
    """The input, ``scale`` times wider and taller (Lanczos): an upscaler's output."""
    image = pyvips.Image.new_from_buffer(source, "")
    return encode(image.resize(scale, kernel="lanczos3"))


def _editable(mask: bytes, width: int, height: int) -> pyvips.Image:
    """Where an edit may change pixels (255) or not (0): a mask's transparent pixels (the
    images wire style's convention), or its white ones when it has no alpha."""
    image = pyvips.Image.new_from_buffer(mask, "")
    if image.width != width or image.height != height:
        image = image.resize(width / image.width, vscale=height / image.height)
    if image.hasalpha():
        return image[image.bands - 1] < 128
    return image.colourspace("b-w")[0] > 127


def edit(
    source: bytes, mask: bytes | None, prompt: str, seed: int, width: int, height: int
) -> bytes:
    """The input at ``width`` x ``height`` with the prompt's picture blended into it: inside
    the mask only when there is one (outside it the pixels stay as they were)."""
    image = pyvips.Image.new_from_buffer(source, "")
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    image = image.colourspace("srgb").cast("uchar")
    if image.bands == 1:
        image = image.bandjoin([image, image])
    if (image.width, image.height) != (width, height):
        image = image.resize(width / image.width, vscale=height / image.height)
    blended = (image * 0.6 + picture(prompt, seed, width, height) * 0.4).cast("uchar")
    if mask is not None:
        blended = _editable(mask, width, height).ifthenelse(blended, image)
    return encode(blended.copy(interpretation="srgb"))


def remove_background(source: bytes) -> bytes:
    """The input with its background transparent, as a PNG: pixels close to the mean colour of
    the image's border (its outermost rows and columns) get alpha 0, the rest 255, with a ramp
    and a slight blur between for a soft edge. An alpha the input had is kept where lower."""
    image = pyvips.Image.new_from_buffer(source, "")
    kept = image[image.bands - 1] if image.hasalpha() else None
    if kept is not None:
        image = image.extract_band(0, n=image.bands - 1)
    if image.interpretation != "srgb" or image.bands != 3:
        image = image.colourspace("srgb")
    colour = image.cast("uchar")
    distance = (((colour.cast("float") - _border_mean(colour)) ** 2).bandmean() * 3) ** 0.5
    ramp = (distance - CUTOUT_NEAR) * (255 / (CUTOUT_FAR - CUTOUT_NEAR))
    alpha = ramp.clamp(min=0, max=255).gaussblur(0.8)
    if kept is not None:
        alpha = alpha * kept / 255
    alpha = alpha.clamp(min=0, max=255).rint().cast("uchar")
    return encode(colour.bandjoin(alpha).copy(interpretation="srgb"))


def _border_mean(image: pyvips.Image) -> list[float]:
    """Each band's mean over the image's outermost rows and columns."""
    w, h = image.width, image.height
    strips = [
        image.crop(0, 0, w, 1),
        image.crop(0, h - 1, w, 1),
        image.crop(0, 0, 1, h),
        image.crop(w - 1, 0, 1, h),
    ]
    total = sum(strip.width * strip.height for strip in strips)
    return [
        sum(strip[band].avg() * strip.width * strip.height for strip in strips) / total
        for band in range(image.bands)
    ]
