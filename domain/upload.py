"""An image a user uploaded to use as a generation's input (``params.image`` / ``params.mask``).

One event says it all: the image was stored, already decoded and re-encoded, under a key of
its own; the upload never changes after. Private to its owner.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import Aggregate


class Upload(Aggregate):
    class Stored(Aggregate.Created):
        user_id: UUID
        storage_key: str
        width: int
        height: int
        format: str  # png, jpeg, webp
        media_type: str
        size_bytes: int
        sha256: str  # of the stored bytes

    def __init__(
        self,
        user_id: UUID,
        storage_key: str,
        width: int,
        height: int,
        format: str,
        media_type: str,
        size_bytes: int,
        sha256: str,
    ) -> None:
        self.user_id, self.storage_key = user_id, storage_key
        self.width, self.height = width, height
        self.format, self.media_type = format, media_type
        self.size_bytes, self.sha256 = size_bytes, sha256

    @classmethod
    def store(
        cls,
        *,
        upload_id: UUID,
        user_id: UUID,
        storage_key: str,
        width: int,
        height: int,
        format: str,
        media_type: str,
        size_bytes: int,
        sha256: str,
    ) -> Upload:
        return cls._create(
            cls.Stored,
            id=upload_id,
            user_id=user_id,
            storage_key=storage_key,
            width=width,
            height=height,
            format=format,
            media_type=media_type,
            size_bytes=size_bytes,
            sha256=sha256,
        )
