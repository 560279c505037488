"""Image inputs: what ``params.image`` / ``params.mask`` refer to, and the rules for them.

A reference is ``"upload:<id>"`` (an upload of the caller's) or ``"generation:<id>"`` (a
completed, unblocked image generation of the caller's). It is resolved once, when the request
is normalised, into an :class:`ImageInput` (blob key, size, content hash) that the
``Requested`` event records: nothing resolves it again, a fallback included.

    upscale            needs params.image; output = input x params.scale, within the model's
                       limits
    edit               needs params.image; params.mask (optional) is the image's size; the
                       output size follows the input's unless asked otherwise
    remove_background  needs params.image; output = input (with transparency), within the
                       model's limits
    image              takes neither (nor does video)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from application.catalogue import ModelSpec
from application.errors import InvalidRequest
from application.ports import BlobStore
from domain.generation import Generation
from domain.upload import Upload

#: The parameters that take an image reference, in the order they are resolved.
IMAGE_FIELDS = ("image", "mask")
#: The model kinds that need ``params.image``.
INPUT_KINDS = frozenset({"upscale", "edit", "remove_background"})
#: The model kinds whose output size is their input's (times ``params.scale`` for an upscale):
#: they take no ``width``, ``height`` or ``aspect_ratio``.
SIZED_BY_INPUT = frozenset({"upscale", "remove_background"})
_HOW = 'an image reference: "upload:<id>" or "generation:<id>"'


@dataclass(frozen=True, slots=True)
class ImageInput:
    """A resolved image input: where its bytes are and what they are."""

    reference: str  # as the user gave it
    storage_key: str
    width: int
    height: int
    media_type: str
    sha256: str  # of the stored bytes: the cache fingerprint's part

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def record(self) -> dict[str, Any]:
        """As the ``Requested`` event stores it."""
        return {
            "reference": self.reference,
            "storage_key": self.storage_key,
            "width": self.width,
            "height": self.height,
            "media_type": self.media_type,
            "sha256": self.sha256,
        }

    @classmethod
    def of_record(cls, record: Mapping[str, Any]) -> ImageInput:
        return cls(
            reference=str(record["reference"]),
            storage_key=str(record["storage_key"]),
            width=int(record["width"]),
            height=int(record["height"]),
            media_type=str(record["media_type"]),
            sha256=str(record["sha256"]),
        )


def records(inputs: Mapping[str, ImageInput]) -> dict[str, dict[str, Any]] | None:
    return {name: item.record() for name, item in inputs.items()} or None


def of_records(stored: Mapping[str, Mapping[str, Any]] | None) -> dict[str, ImageInput]:
    return {name: ImageInput.of_record(record) for name, record in (stored or {}).items()}


def references(params: Mapping[str, Any]) -> dict[str, str]:
    """The image references a request's ``params`` carry, by parameter (each a string)."""
    found: dict[str, str] = {}
    for name in IMAGE_FIELDS:
        value = params.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InvalidRequest(f"params.{name}", f"must be {_HOW}")
        found[name] = value
    return found


def parse_reference(field: str, reference: str) -> tuple[str, UUID]:
    """``("upload" | "generation", id)``; anything else is refused naming ``field``."""
    kind, _, text = reference.partition(":")
    if kind not in ("upload", "generation"):
        raise InvalidRequest(field, f"must be {_HOW}")
    try:
        return kind, UUID(text)
    except ValueError:
        raise InvalidRequest(field, f"{text[:40]!r} is not an id") from None


class InputResolver(Protocol):
    """Resolves an image reference of ``user_id``'s (the port the use cases call)."""

    def resolve(self, user_id: UUID, field: str, reference: str) -> ImageInput: ...


class StoredInputs:
    """Resolves references from the write side (uploads and generations are aggregates of the
    generations application), so an upload or a generation the caller was just given resolves
    at once, and ownership and state are the authoritative ones."""

    def __init__(self, load: Callable[[UUID], Aggregate], blobs: BlobStore | None) -> None:
        self.load, self.blobs = load, blobs

    def resolve(self, user_id: UUID, field: str, reference: str) -> ImageInput:
        kind, aggregate_id = parse_reference(field, reference)
        try:
            found: Any = self.load(aggregate_id)
        except AggregateNotFoundError:
            found = None
        if kind == "upload":
            if not isinstance(found, Upload) or found.user_id != user_id:
                raise InvalidRequest(field, f"no upload {aggregate_id}")
            return ImageInput(
                reference,
                found.storage_key,
                found.width,
                found.height,
                found.media_type,
                found.sha256,
            )
        if not isinstance(found, Generation) or found.user_id != user_id:
            raise InvalidRequest(field, f"no generation {aggregate_id}")
        return self._generation_input(field, reference, found)

    def _generation_input(self, field: str, reference: str, generation: Generation) -> ImageInput:
        if generation.status == "blocked":
            raise InvalidRequest(field, f"generation {generation.id} is blocked")
        if generation.status != "completed" or generation.result is None:
            raise InvalidRequest(
                field, f"generation {generation.id} is {generation.status}, not completed"
            )
        image = result_image(generation.result, generation.processed)
        if image is None:
            raise InvalidRequest(field, f"generation {generation.id} did not make an image")
        key, width, height, media_type = image
        if self.blobs is None:
            raise InvalidRequest(field, "generation inputs are not available here")
        sha256 = hashlib.sha256(self.blobs.get(key)).hexdigest()
        return ImageInput(reference, key, width, height, media_type, sha256)


def result_image(
    result: Mapping[str, Any], processed: Mapping[str, Any] | None
) -> tuple[str, int, int, str] | None:
    """(key, width, height, media type) of the image a generation shows as its result: the
    processed ``original`` (metadata stripped), or the provider's bytes until it exists (never
    processed, or shown before its derivatives: an input goes to a provider, not to a
    viewer); ``None`` when it is not a still image (a video)."""
    for artefact in (processed or {}).get("artefacts") or []:
        if artefact["kind"] == "original":
            media_type = str(artefact["media_type"])
            if not media_type.startswith("image/"):
                return None
            return (
                str(artefact["storage_key"]),
                int(artefact["width"]),
                int(artefact["height"]),
                media_type,
            )
    media_type = str(result.get("content_type", ""))
    if media_type not in ("image/png", "image/jpeg", "image/webp"):
        return None
    return str(result["storage_key"]), int(result["width"]), int(result["height"]), media_type


# -- the rules, applied while a request is normalised -------------------------------------


def take_inputs(
    spec: ModelSpec, raw: dict[str, Any], inputs: Mapping[str, ImageInput]
) -> ImageInput | None:
    """Removes the references from ``raw``; the input image (``None`` if none was given).

    Refuses an input the model does not take and a mask of another size than the image;
    whether a required image is there is :func:`require_image`'s.
    """
    given = references(raw)
    for name in IMAGE_FIELDS:
        raw.pop(name, None)
    for name in given:
        if name not in inputs:
            raise InvalidRequest(f"params.{name}", "was not resolved")  # a caller's slip
    if "image" in given and spec.kind not in INPUT_KINDS:
        raise InvalidRequest("params.image", f"{spec.key} takes no input image")
    if "mask" in given:
        if spec.kind != "edit":
            raise InvalidRequest("params.mask", f"{spec.key} is not an edit model")
        if "image" not in given:
            raise InvalidRequest("params.mask", "a mask needs params.image")
        image, mask = inputs["image"], inputs["mask"]
        if (mask.width, mask.height) != (image.width, image.height):
            raise InvalidRequest(
                "params.mask",
                f"must be the image's size, {image.width}x{image.height}, "
                f"not {mask.width}x{mask.height}",
            )
    return inputs["image"] if "image" in given else None


def require_image(spec: ModelSpec, source: ImageInput | None) -> ImageInput | None:
    if source is None and spec.kind in INPUT_KINDS:
        raise InvalidRequest("params.image", f"{spec.key} needs an input image: {_HOW}")
    return source


def upscaled_size(spec: ModelSpec, source: ImageInput, scale: int) -> tuple[int, int]:
    """The output of upscaling ``source`` by ``scale``, if the model can make it."""
    return _within_limits(spec, source, scale)


def input_size(spec: ModelSpec, source: ImageInput) -> tuple[int, int]:
    """The output of a model that makes its input's size (a background removal), if it can."""
    return _within_limits(spec, source, 1)


def _within_limits(spec: ModelSpec, source: ImageInput, scale: int) -> tuple[int, int]:
    sizes, limit = spec.capabilities.sizes, spec.capabilities.max_pixels
    width, height = source.width * scale, source.height * scale
    if sizes is not None and min(source.width, source.height) < sizes.min:
        raise InvalidRequest("params.image", f"{spec.key} takes images of {sizes.min} px a side")
    too_wide = sizes is not None and max(width, height) > sizes.max
    if width * height > limit or too_wide:
        made = f" upscaled {scale}x is {width}x{height}," if scale != 1 else " is"
        raise InvalidRequest(
            "params.image",
            f"{source.width}x{source.height}{made} beyond "
            f"{spec.key}'s {limit:,} pixels"
            + (f" or {sizes.max} px a side" if sizes is not None else ""),
        )
    return width, height


def input_ratio(source: ImageInput | None) -> Fraction:
    """The input's aspect ratio (``match_input``), kept between 1:8 and 8:1; square without."""
    if source is None:
        return Fraction(1)
    return min(Fraction(8), max(Fraction(1, 8), Fraction(source.width, source.height)))
