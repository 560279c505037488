"""The image pipeline: six artefacts, a blurhash and a quality score (pyvips), in two steps.

What showing the image needs comes first (:func:`visible`: the preview the classifier judges,
the thumbnail, blurhash, quality); the rest (:func:`derivatives`) is made after the result was
shown, by a reaction of its own, each step decoding the source once.

    thumb    256 px (longest side) WebP        preview  512 px WebP
    full     full-size WebP                    modern   full-size AVIF (JPEG where AVIF is not
    original the requested format                       available in this libvips)
    social   1200x630 JPEG, cropped (at most)  blurhash a string, from a 32 px copy
    quality  sharpness, exposure and entropy in [0, 1]

``social`` is the card a link preview shows (Open Graph ``og:image``, X/Twitter
``summary_large_image``): a gallery page shared anywhere needs one, at the one size and
proportion (1.91:1) those crawlers display, in the one format they all accept; the crop keeps
the part of the picture libvips finds most interesting. (A 2x thumbnail would be the preview
again: 512 px WebP.) A video's artefacts (``process_video``) are its poster, thumb and the file
itself, stripped of its container metadata (:mod:`.video`).

Every artefact is saved with ``keep=NONE``: EXIF (GPS included), XMP, IPTC, comments and the ICC
profile are dropped, after the pixels were converted to sRGB (through the embedded profile, if
any), so what a viewer shows is what the generator made and nothing about where. The
derivatives' encoders run on a small thread pool (libvips releases the GIL), so the slow ones
(full WebP, AVIF) overlap.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import av
import blurhash
import pyvips

from application.imaging import (
    DERIVED_KINDS,
    Artefact,
    ProcessedImage,
    ProcessingFailed,
)
from infrastructure.imaging.video import MEDIA_TYPE as MP4_MEDIA_TYPE
from infrastructure.imaging.video import first_frame, strip_metadata

T = TypeVar("T")
KEEP_NONE = pyvips.enums.ForeignKeep.NONE
SIZES = {"thumb": 256, "preview": 512}
SOCIAL_SIZE = (1200, 630)
#: The artefacts of an image, in the order they are recorded and listed (the original last).
IMAGE_KINDS = ("thumb", "preview", "social", "full", "modern", "original")
WEBP_Q, AVIF_Q, JPEG_Q = 80, 50, 85
#: Encoder effort, measured (benchmarks/image_pipeline.py, 1024 px photo-like source): AVIF
#: effort 0 encodes ~5x faster than 2 at the same size and PSNR (+-0.1 dB); effort 4 is ~10x
#: slower again for a few per cent. WebP effort 0 saves ~4 ms for a 7 % larger file: keep 2.
WEBP_EFFORT, AVIF_EFFORT = 2, 0
#: PNG with every row filter tried: half the bytes of unfiltered for ~5 ms (on a pool thread).
PNG_COMPRESSION, PNG_FILTER = 3, "all"
#: The side the BlurHash is computed from. Its 4x4 components are far below this resolution's
#: detail, and the encoder is pure Python holding the GIL: from 32 px it took ~17 ms a result
#: (a quarter of a worker's Python time in a burst), from 16 px ~7 ms, for a hash that decodes
#: to the same picture within a few levels per channel.
BLURHASH_SIZE = 16
MEDIA_TYPES = {
    "webp": "image/webp",
    "avif": "image/avif",
    "jpeg": "image/jpeg",
    "png": "image/png",
}
_LAPLACIAN = pyvips.Image.new_from_array([[0, 1, 0], [1, -4, 1], [0, 1, 0]])


def avif_available() -> bool:
    """Whether this libvips encodes AVIF (pyvips-binary does; some system builds do not)."""
    global _AVIF  # noqa: PLW0603 - probed once per process
    if _AVIF is None:
        try:
            pyvips.Image.black(8, 8, bands=3).heifsave_buffer(compression="av1", effort=0)
            _AVIF = True
        except pyvips.Error:
            _AVIF = False
    return _AVIF


_AVIF: bool | None = None
_pool_lock = threading.Lock()
_pool: Executor | None = None


def _executor() -> Executor:
    global _pool  # noqa: PLW0603 - one small pool per process
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="pixevo-image")
        return _pool


def to_srgb(image: pyvips.Image) -> pyvips.Image:
    """8-bit sRGB (alpha kept): through the embedded ICC profile if there is one."""
    if image.get_typeof("icc-profile-data") != 0:
        # a broken profile: fall back to the interpretation libvips inferred
        with contextlib.suppress(pyvips.Error):
            image = image.icc_transform("srgb", embedded=True, intent="perceptual")
    if image.interpretation != "srgb":
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def _fit(image: pyvips.Image, size: int) -> pyvips.Image:
    if max(image.width, image.height) <= size:
        return image
    return image.thumbnail_image(size, height=size, size="down")


def _opaque(image: pyvips.Image) -> pyvips.Image:
    return image.flatten(background=[255, 255, 255]) if image.hasalpha() else image


def encode(image: pyvips.Image, fmt: str, *, progressive: bool = True) -> bytes:
    """``progressive`` JPEG shows a blurred whole image early in a browser, at twice the
    encoding time; a card that crawlers fetch whole is baseline."""
    if fmt == "webp":
        data = image.webpsave_buffer(Q=WEBP_Q, effort=WEBP_EFFORT, keep=KEEP_NONE)
    elif fmt == "avif":
        data = image.heifsave_buffer(
            compression="av1", Q=AVIF_Q, effort=AVIF_EFFORT, keep=KEEP_NONE
        )
    elif fmt == "jpeg":
        data = _opaque(image).jpegsave_buffer(
            Q=JPEG_Q, optimize_coding=True, interlace=progressive, keep=KEEP_NONE
        )
    elif fmt == "png":
        data = image.pngsave_buffer(compression=PNG_COMPRESSION, filter=PNG_FILTER, keep=KEEP_NONE)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return bytes(data)


def _artefact(kind: str, image: pyvips.Image, fmt: str, *, progressive: bool = True) -> Artefact:
    data = encode(image, fmt, progressive=progressive)
    return Artefact(kind, data, image.width, image.height, fmt, MEDIA_TYPES[fmt])


def blurhash_of(image: pyvips.Image) -> str:
    """A BlurHash with components in the image's proportions (4 along the longer side)."""
    small = _opaque(image).thumbnail_image(BLURHASH_SIZE, height=BLURHASH_SIZE, size="down")
    pixels = bytes(small.write_to_memory())
    width, height, bands = small.width, small.height, small.bands
    rows = [
        [[pixels[(y * width + x) * bands + c] for c in range(3)] for x in range(width)]
        for y in range(height)
    ]
    ratio = image.width / image.height
    x_components = 4 if ratio >= 1 else max(1, min(9, round(4 * ratio)))
    y_components = 4 if ratio <= 1 else max(1, min(9, round(4 / ratio)))
    return str(blurhash.encode(rows, components_x=x_components, components_y=y_components))


@dataclass(frozen=True, slots=True)
class QualityParts:
    sharpness: float
    exposure: float
    entropy: float

    @property
    def score(self) -> float:
        return round(0.4 * self.sharpness + 0.3 * self.exposure + 0.3 * self.entropy, 4)


def quality_of(image: pyvips.Image) -> QualityParts:
    """Sharpness (variance of a Laplacian), exposure and entropy of the luminance, each in [0, 1].

    Measured on a copy at most 512 px wide, so the score does not depend on resolution.
    """
    grey = _opaque(image).colourspace("b-w")[0]
    if grey.width > 512:
        grey = grey.resize(512 / grey.width)
    laplacian = grey.cast("float").conv(_LAPLACIAN, precision="float")
    variance = laplacian.deviate() ** 2
    sharpness = 1 - math.exp(-variance / 300)  # ~0.3 for a soft image, ~1 for a crisp one
    mean = grey.avg()
    clipped = ((grey <= 2).avg() + (grey >= 253).avg()) / 255
    exposure = max(0.0, 1 - abs(mean - 118) / 118 - 2 * clipped)
    entropy = grey.hist_find().hist_entropy() / 8
    return QualityParts(round(sharpness, 4), round(exposure, 4), round(entropy, 4))


def social_size(width: int, height: int) -> tuple[int, int]:
    """The card's size for a source of ``width`` x ``height``: SOCIAL_SIZE, or as much of it as
    the source fills without being enlarged (an enlarged card shows no more, costs several
    times the encoding, and crawlers take any card from 600x315 up at the same proportion)."""
    card_width, card_height = SOCIAL_SIZE
    factor = min(1.0, width / card_width, height / card_height)
    return max(1, round(card_width * factor)), max(1, round(card_height * factor))


def social_card(source: pyvips.Image) -> Artefact:
    """The link-preview card at 1.91:1 (see :func:`social_size`), filled and cropped
    (``attention``: the region with the most edges, skin tones and saturation), from the
    decoded source in memory; baseline JPEG, since crawlers fetch it whole."""
    width, height = social_size(source.width, source.height)
    card = source.thumbnail_image(width, height=height, crop="attention", size="down")
    return _artefact("social", card, "jpeg", progressive=False)


def _decoded(data: bytes) -> pyvips.Image:
    return to_srgb(pyvips.Image.new_from_buffer(data, "", access="random")).copy_memory()


def visible(data: bytes) -> ProcessedImage:
    """What it takes to show a still image (the first frame of an animation): the preview the
    classifier judges, the thumbnail, the blurhash and the quality score. Its ``artefacts``
    are :data:`VISIBLE_KINDS`; :func:`derivatives` makes the rest later."""
    source = _decoded(data)
    preview_image = _fit(source, SIZES["preview"]).copy_memory()
    thumb_image = _fit(preview_image, SIZES["thumb"])
    return ProcessedImage(
        artefacts=[
            _artefact("thumb", thumb_image, "webp"),
            _artefact("preview", preview_image, "webp"),
        ],
        width=source.width,
        height=source.height,
        blurhash=blurhash_of(thumb_image),
        quality_score=quality_of(preview_image).score,
    )


def derivatives(data: bytes, output_format: str) -> list[Artefact]:
    """The artefacts nobody waits for (:data:`DERIVED_KINDS`), the slow encoders overlapping
    on the pool."""
    source = _decoded(data)
    modern = "avif" if avif_available() else "jpeg"
    pool = _executor()
    slow: list[tuple[str, pyvips.Image, str]] = [
        ("full", source, "webp"),
        ("modern", source, modern),
        ("original", source, output_format),
    ]
    futures = [pool.submit(_artefact, kind, image, fmt) for kind, image, fmt in slow]
    made = {a.kind: a for a in [social_card(source), *(f.result() for f in futures)]}
    return [made[k] for k in DERIVED_KINDS]


def process(data: bytes, output_format: str) -> ProcessedImage:
    """Every artefact of one still image at once (what :func:`visible` and then
    :func:`derivatives` make)."""
    shown = visible(data)
    made = {a.kind: a for a in [*shown.artefacts, *derivatives(data, output_format)]}
    return ProcessedImage(
        artefacts=[made[k] for k in IMAGE_KINDS],
        width=shown.width,
        height=shown.height,
        blurhash=shown.blurhash,
        quality_score=shown.quality_score,
    )


def process_video(data: bytes) -> ProcessedImage:
    """A video's poster (its first frame, full size WebP), thumbnail, and the file itself
    without its container metadata; width and height are the video stream's."""
    frame = to_srgb(first_frame(data)).copy_memory()
    thumb_image = _fit(frame, SIZES["thumb"])
    served = strip_metadata(data)
    original = Artefact("original", served, frame.width, frame.height, "mp4", MP4_MEDIA_TYPE)
    return ProcessedImage(
        artefacts=[
            _artefact("thumb", thumb_image, "webp"),
            _artefact("poster", frame, "webp"),
            original,
        ],
        width=frame.width,
        height=frame.height,
        blurhash=blurhash_of(thumb_image),
        quality_score=quality_of(frame).score,
    )


class PyvipsPipeline:
    """The :class:`application.imaging.ImagePipeline` port."""

    def process(self, data: bytes, *, video: bool) -> ProcessedImage:
        return _readable(lambda: process_video(data) if video else visible(data))

    def derive(self, data: bytes, output_format: str, *, video: bool) -> list[Artefact]:
        if video:  # a video's artefacts are all made before it is shown
            return []
        return _readable(lambda: derivatives(data, output_format))


def _readable(make: Callable[[], T]) -> T:
    """``make()``, a decoding error raised as :class:`ProcessingFailed`."""
    try:
        return make()
    except pyvips.Error as error:
        message = _first_line(error)
        raise ProcessingFailed(f"the result is not a readable image: {message}") from None
    except av.FFmpegError as error:  # InvalidDataError and the like
        message = _first_line(error)
        raise ProcessingFailed(f"the result is not a readable video: {message}") from None


def _first_line(error: Exception) -> str:
    message = str(error).strip()
    return message.splitlines()[0] if message else "unreadable"
