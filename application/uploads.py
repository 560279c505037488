"""Uploads: images users send to use as inputs (``params.image`` = ``"upload:<id>"``).

    bytes ──▶ ImageIngest (header first: too many pixels ─▶ 413, before decoding anything;
              then decode, re-encode without metadata) ──▶ blob store ──▶ Upload.Stored

The blob is written before the event, so a recorded upload always has its bytes (a failure in
between leaves an unreferenced blob, never a reference without one). An upload is an aggregate
of the generations application: a generation request resolves it from the write side, and so
does the owner reading it back, at once and with the authoritative owner.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.assets import upload_key
from application.errors import Invalid, NotFound, TooLarge
from application.generations import GenerationsApplication
from application.ports import BlobStore
from domain.ids import uuid7
from domain.upload import Upload

#: At most this many bytes in a request body (answered 413 before reading further).
MAX_UPLOAD_BYTES = 20_000_000
#: At most this many pixels, read from the image's header before it is decoded.
MAX_UPLOAD_PIXELS = 40_000_000
#: The media types an upload may declare, and the format each is.
UPLOAD_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


class NotAnImage(Invalid):
    """The body does not decode as a PNG, JPEG or WebP image (HTTP 422)."""


class ImageTooLarge(TooLarge):
    """More bytes or pixels than an upload may have (HTTP 413)."""


class UploadNotFound(NotFound, LookupError):
    pass


@dataclass(frozen=True, slots=True)
class IngestedImage:
    """An image decoded and re-encoded (metadata stripped): what is stored."""

    data: bytes
    width: int
    height: int
    format: str  # png, jpeg, webp
    media_type: str


class ImageIngest(Protocol):
    def ingest(self, data: bytes, max_pixels: int) -> IngestedImage:
        """Reads the header, refuses more than ``max_pixels`` (:class:`ImageTooLarge`), then
        decodes and re-encodes; :class:`NotAnImage` for anything that does not decode."""
        ...


@dataclass(frozen=True, slots=True)
class UploadState:
    id: UUID
    user_id: UUID
    storage_key: str
    width: int
    height: int
    format: str
    media_type: str
    bytes: int
    sha256: str
    created_on: datetime

    @classmethod
    def of(cls, upload: Upload) -> UploadState:
        return cls(
            id=upload.id,
            user_id=upload.user_id,
            storage_key=upload.storage_key,
            width=upload.width,
            height=upload.height,
            format=upload.format,
            media_type=upload.media_type,
            bytes=upload.size_bytes,
            sha256=upload.sha256,
            created_on=upload.created_on,
        )


class Uploads:
    """The upload use cases (blocking: pixel work and I/O; the API runs them in a thread)."""

    def __init__(
        self, generations: GenerationsApplication, blobs: BlobStore, ingest: ImageIngest
    ) -> None:
        self.generations, self.blobs, self.ingest = generations, blobs, ingest

    def upload(self, user_id: UUID, data: bytes) -> UploadState:
        if len(data) > MAX_UPLOAD_BYTES:
            raise ImageTooLarge(f"an upload is at most {MAX_UPLOAD_BYTES:,} bytes")
        image = self.ingest.ingest(data, MAX_UPLOAD_PIXELS)
        upload_id = uuid7()
        key = upload_key(user_id, upload_id, image.format)
        self.blobs.put(key, image.data, image.media_type)
        upload = Upload.store(
            upload_id=upload_id,
            user_id=user_id,
            storage_key=key,
            width=image.width,
            height=image.height,
            format=image.format,
            media_type=image.media_type,
            size_bytes=len(image.data),
            sha256=hashlib.sha256(image.data).hexdigest(),
        )
        self.generations.save(upload)
        return UploadState.of(upload)

    def get(self, user_id: UUID, upload_id: UUID) -> UploadState:
        """The upload, if ``user_id`` owns it; else :class:`UploadNotFound`."""
        try:
            upload = self.generations.load(upload_id, Upload)
        except (AggregateNotFoundError, TypeError):
            raise UploadNotFound(f"no upload {upload_id}") from None
        if upload.user_id != user_id:
            raise UploadNotFound(f"no upload {upload_id}")
        return UploadState.of(upload)
