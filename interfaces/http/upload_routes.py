"""Uploads (image inputs) and the signed links providers fetch inputs from."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import structlog
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter
from litestar.types import ControllerRouterHandler

from application import assets
from application.ports import BlobStore
from application.uploads import MAX_UPLOAD_BYTES, UPLOAD_TYPES, Uploads, UploadState
from application.users import User
from infrastructure.signing import AssetSigner
from interfaces.http import dto
from interfaces.http.problems import ProblemError
from interfaces.http.ratelimit import RATE_LIMITED

_PRIVATE = {"Cache-Control": "private, max-age=3600"}
log = structlog.get_logger(__name__)


class UploadServices:
    """What the upload routes use, as one dependency; the write side opens on first use."""

    def __init__(
        self, uploads: Callable[[], Uploads], blobs: BlobStore, signer: AssetSigner
    ) -> None:
        self._uploads, self.blobs, self.signer = uploads, blobs, signer

    @property
    def uploads(self) -> Uploads:
        return self._uploads()


Services = NamedDependency[UploadServices]


def _view(upload: UploadState) -> dto.Upload:
    return dto.Upload(
        id=upload.id,
        url=assets.upload_content_url(upload.id),
        width=upload.width,
        height=upload.height,
        format=upload.format,
        bytes=upload.bytes,
        sha256=upload.sha256,
        created_at=upload.created_on,
    )


class UploadsController(Controller):
    path = "/v1/uploads"

    @post("", status_code=201, request_max_body_size=MAX_UPLOAD_BYTES, opt=RATE_LIMITED)
    async def upload(
        self, request: Request[User, Any, Any], upload_services: Services
    ) -> dto.Upload:
        """The body is the image (PNG, JPEG or WebP, at most 20 MB and 40 megapixels)."""
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type not in UPLOAD_TYPES:
            raise ProblemError(415, f"the body must be one of {', '.join(UPLOAD_TYPES)}")
        data = await request.body()  # a bigger body answers 413 before more is read
        uploads = upload_services.uploads
        upload = await asyncio.to_thread(uploads.upload, request.user.id, data)
        log.info(
            "upload.stored",
            upload_id=str(upload.id),
            width=upload.width,
            height=upload.height,
            bytes=upload.bytes,
        )
        return _view(upload)

    @get("/{upload_id:uuid}", sync_to_thread=True)
    def upload_view(
        self, request: Request[User, Any, Any], upload_id: FromPath[UUID], upload_services: Services
    ) -> dto.Upload:
        return _view(upload_services.uploads.get(request.user.id, upload_id))

    @get("/{upload_id:uuid}/content", sync_to_thread=True)
    def content(
        self, request: Request[User, Any, Any], upload_id: FromPath[UUID], upload_services: Services
    ) -> Response[bytes]:
        """The stored (re-encoded) bytes, to the owner only."""
        upload = upload_services.uploads.get(request.user.id, upload_id)
        data = upload_services.blobs.get(upload.storage_key)
        return Response(data, media_type=upload.media_type, headers=_PRIVATE)


Signature = Annotated[str, Parameter(pattern=r"^[0-9a-f]{64}$")]


@get("/v1/files/{key:path}", exclude_from_auth=True, sync_to_thread=True)
def signed_file(
    key: FromPath[str],
    upload_services: Services,
    expires: Annotated[int, Parameter(ge=0)],
    signature: Signature,
) -> Response[bytes]:
    """A stored image through a signed, expiring link (how a provider fetches an input)."""
    key = key.lstrip("/")
    if not upload_services.signer.verify(key, expires, signature):
        raise ProblemError(403, "the link is not valid, or it has expired")
    try:
        data = upload_services.blobs.get(key)
    except (FileNotFoundError, ValueError):
        raise ProblemError(404, "nothing is stored there") from None
    return Response(data, media_type=assets.media_type_of(key), headers=_PRIVATE)


ROUTES: list[ControllerRouterHandler] = [UploadsController, signed_file]
