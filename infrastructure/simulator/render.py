"""Deterministic pictures from prompt, seed and size (same inputs, byte-identical output)."""

from __future__ import annotations

import hashlib

import pyvips

FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


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
