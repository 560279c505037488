"""Where a generation's files live in the blob store, and the URLs the API serves them at.

Every blob key and every asset URL is built here, so storage and routes cannot drift apart.
Keys are the generation's and the artefact's, so a repeated step overwrites the same files.
"""

from __future__ import annotations

from uuid import UUID

#: A provider's result, by media type (anything else is stored as ``.bin``).
_RESULT_EXTENSIONS = {
    "image/png": "png",
    "image/webp": "webp",
    "image/jpeg": "jpg",
    "video/mp4": "mp4",
}
#: A processed artefact, by format.
_ARTEFACT_EXTENSIONS = {"webp": "webp", "avif": "avif", "jpeg": "jpg", "png": "png", "mp4": "mp4"}


def result_key(generation_id: UUID, content_type: str) -> str:
    """The provider's bytes, as fetched: kept apart from the pipeline's re-encoded ``original``
    (same format, same name otherwise), so a re-run reads what the provider sent."""
    extension = _RESULT_EXTENSIONS.get(content_type, "bin")
    return f"generations/{generation_id}/provider.{extension}"


def artefact_key(generation_id: UUID, kind: str, fmt: str) -> str:
    """A derivative made by the image pipeline (``thumb``, ``preview``, ``original``, ...)."""
    return f"generations/{generation_id}/{kind}.{_ARTEFACT_EXTENSIONS[fmt]}"


def preview_key(generation_id: UUID, number: int) -> str:
    """A streaming provider's ``number``-th preview."""
    return f"generations/{generation_id}/previews/{number}.jpg"


def generation_url(generation_id: UUID) -> str:
    return f"/v1/generations/{generation_id}"


def events_url(generation_id: UUID) -> str:
    return f"/v1/generations/{generation_id}/events"


def asset_url(generation_id: UUID, kind: str) -> str:
    return f"/v1/generations/{generation_id}/assets/{kind}"


def preview_url(generation_id: UUID, number: int) -> str:
    return f"/v1/generations/{generation_id}/previews/{number}"


# -- uploads and signed links --------------------------------------------------------------


def upload_key(user_id: UUID, upload_id: UUID, fmt: str) -> str:
    """An upload's re-encoded bytes, under its owner."""
    return f"uploads/{user_id}/{upload_id}.{_ARTEFACT_EXTENSIONS[fmt]}"


def upload_url(upload_id: UUID) -> str:
    return f"/v1/uploads/{upload_id}"


def upload_content_url(upload_id: UUID) -> str:
    """The upload's bytes, with the owner's key."""
    return f"/v1/uploads/{upload_id}/content"


#: Signed links serve any blob whose key starts with one of these, to whoever holds the link.
SIGNED_PREFIXES = ("uploads/", "generations/")


def signed_path(key: str, expires: int, signature: str) -> str:
    """A blob's link for someone without a key (a provider fetching an input): the signature
    covers the key and the expiry (see ``infrastructure.signing``)."""
    return f"/v1/files/{key}?expires={expires}&signature={signature}"


def media_type_of(key: str) -> str:
    """A stored blob's media type, from its key's extension."""
    extension = key.rsplit(".", 1)[-1]
    types = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
    return types.get(extension, "application/octet-stream")
