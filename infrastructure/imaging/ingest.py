"""Uploads through pyvips: the header first, then one streaming decode and re-encode.

Only PNG, JPEG and WebP are read, recognised by their signature before libvips sees a byte (no
other loader ever runs on a user's upload). The header gives the size without decoding: a
decompression bomb (a small file declaring 20000x20000) is refused right there. Then the image
is decoded sequentially (never whole in memory), converted to sRGB and re-encoded in its own
format with the pipeline's encoders, which keep no metadata (EXIF, GPS, XMP, ICC).
"""

from __future__ import annotations

import pyvips

from application.uploads import (
    UPLOAD_TYPES,
    ImageTooLarge,
    IngestedImage,
    NotAnImage,
)
from infrastructure.imaging.pipeline import encode, to_srgb

_LOADERS = {"png": "pngload_buffer", "jpeg": "jpegload_buffer", "webp": "webpload_buffer"}
_MEDIA_TYPES = {fmt: media_type for media_type, fmt in UPLOAD_TYPES.items()}


def sniff(data: bytes) -> str | None:
    """``png``, ``jpeg`` or ``webp`` by the file's signature; ``None`` for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _load(data: bytes, fmt: str, **options: object) -> pyvips.Image:
    loader = getattr(pyvips.Image, _LOADERS[fmt])
    image: pyvips.Image = loader(data, access="sequential", **options)
    return image


class PyvipsIngest:
    """The :class:`application.uploads.ImageIngest` port."""

    def ingest(self, data: bytes, max_pixels: int) -> IngestedImage:
        fmt = sniff(data)
        if fmt is None:
            raise NotAnImage("the body is not a PNG, JPEG or WebP image")
        try:
            header = _load(data, fmt)  # reads the header only
        except pyvips.Error:
            raise NotAnImage(f"the body does not decode as a {fmt.upper()} image") from None
        width, height = header.width, header.height
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"{width}x{height} is {width * height:,} pixels; at most {max_pixels:,}"
            )
        try:
            image = to_srgb(_load(data, fmt, fail_on="error"))
            encoded = encode(image, fmt)
        except pyvips.Error:
            raise NotAnImage(f"the body does not decode as a {fmt.upper()} image") from None
        return IngestedImage(encoded, width, height, fmt, _MEDIA_TYPES[fmt])
