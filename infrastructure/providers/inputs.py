"""How adapters hand a generation's image inputs to a provider.

a link     a signed, expiring URL of the blob on our API, which the provider fetches
           (the predictions and queue wire styles, as Replicate and fal take inputs)
the bytes  base64 in the request body (the synchronous images wire style)
"""

from __future__ import annotations

import base64

from application.inputs import ImageInput
from application.ports import BlobStore
from infrastructure.signing import AssetSigner


class ProviderInputs:
    def __init__(self, blobs: BlobStore, signer: AssetSigner, public_url: str) -> None:
        self.blobs, self.signer = blobs, signer
        self.public_url = public_url.rstrip("/")

    def url(self, item: ImageInput) -> str:
        """A link the provider can fetch the input from, for the next hour."""
        return self.public_url + self.signer.path(item.storage_key)

    def base64(self, item: ImageInput) -> str:
        return base64.b64encode(self.blobs.get(item.storage_key)).decode()
