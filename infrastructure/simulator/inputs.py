"""Image inputs as the simulated providers take them: a URL they fetch (predictions: input.image
and input.mask; queue: image_url and mask_url) or base64 in the body (images: image, mask)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import httpx

from application.catalogue import ModelSpec
from application.inputs import INPUT_KINDS


class InputRefused(Exception):
    """The request's input cannot be used (the provider answers 422)."""


async def fetch_inputs(
    model: ModelSpec, image: Any, mask: Any
) -> tuple[bytes | None, bytes | None]:
    """The image's and the mask's bytes; a model that needs an image (an upscaler, an edit
    model, a background remover) is refused without one, as a provider would."""
    if model.kind in INPUT_KINDS and not image:
        raise InputRefused(f"{model.key} needs an input image")
    return await _input(image), await _input(mask)


async def _input(value: Any) -> bytes | None:
    if value is None:
        return None
    text = str(value)
    if text.startswith(("http://", "https://")):
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.get(text)
        except httpx.HTTPError as error:
            raise InputRefused(f"cannot fetch the input: {error}") from None
        if response.status_code != 200:
            raise InputRefused(f"cannot fetch the input: HTTP {response.status_code}")
        return response.content
    try:  # base64, bare or as a data: URI
        return base64.b64decode(text.partition("base64,")[2] or text, validate=True)
    except (binascii.Error, ValueError):
        raise InputRefused("the input is neither a URL nor base64") from None
