"""Uploads through the HTTP API (in-process ASGI client, real PostgreSQL and pyvips): limits
before decoding, re-encoding without metadata, privacy, signed links, references in a quote."""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
import pyvips
from litestar.testing import TestClient

from interfaces.bootstrap import Container
from interfaces.http.app import create_app
from tests.integration.test_api import assert_problem, bearer

pytestmark = pytest.mark.integration


@pytest.fixture
def client(container: Container) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(container)) as client:
        yield client


@pytest.fixture
def owner(container: Container) -> dict[str, str]:
    return bearer(container.users.create("owner@example.com", "10").api_key)


def picture(width: int = 320, height: int = 200) -> pyvips.Image:
    xy = pyvips.Image.xyz(width, height)
    bands = [(xy[0] * 255 / width), (xy[1] * 255 / height), (xy[0] + xy[1]) % 256]
    return bands[0].bandjoin(bands[1:]).cast("uchar").copy(interpretation="srgb")


def with_metadata(image: pyvips.Image, suffix: str) -> bytes:
    tagged = image.copy()
    tagged.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Artist", "Ada (Ada, ASCII, 4 components)")
    tagged.set_type(pyvips.GValue.gstr_type, "png-comment-0-Comment", "taken at home")
    data: bytes = tagged.write_to_buffer(suffix)
    return data


def bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A few kilobytes of PNG that declare ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + width * 3) * 4)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def user_id(client: TestClient[Any], headers: dict[str, str]) -> UUID:
    return UUID(client.get("/v1/me", headers=headers).json()["user_id"])


def post(client: TestClient[Any], headers: dict[str, str], data: bytes, media_type: str) -> Any:
    return client.post("/v1/uploads", content=data, headers={**headers, "Content-Type": media_type})


@pytest.mark.parametrize(("suffix", "media_type"), [(".png", "image/png"), (".jpg", "image/jpeg")])
def test_an_upload_is_re_encoded_without_metadata_and_served_to_its_owner_only(
    client: TestClient[Any],
    container: Container,
    owner: dict[str, str],
    suffix: str,
    media_type: str,
) -> None:
    created = post(client, owner, with_metadata(picture(), suffix), media_type)
    assert created.status_code == 201, created.text
    upload = created.json()
    fmt = media_type.split("/")[1]
    assert (upload["width"], upload["height"], upload["format"]) == (320, 200, fmt)
    content = client.get(upload["url"], headers=owner)
    assert content.status_code == 200
    assert content.headers["content-type"] == media_type
    assert hashlib.sha256(content.content).hexdigest() == upload["sha256"]
    assert len(content.content) == upload["bytes"]
    stored = pyvips.Image.new_from_buffer(content.content, "")
    assert not [f for f in stored.get_fields() if f.startswith(("exif", "png-comment", "xmp"))]
    assert client.get(f"/v1/uploads/{upload['id']}", headers=owner).json() == upload
    stranger = bearer(container.users.create("stranger@example.com").api_key)
    assert_problem(client.get(f"/v1/uploads/{upload['id']}", headers=stranger), 404)
    assert_problem(client.get(upload["url"], headers=stranger), 404)
    assert_problem(client.get(upload["url"]), 401)


def test_what_is_not_an_acceptable_image_is_refused_before_it_is_decoded(
    client: TestClient[Any], owner: dict[str, str]
) -> None:
    # answered from the header: decoding 400 megapixels would take a gigabyte and many seconds
    too_many_pixels = assert_problem(post(client, owner, bomb(), "image/png"), 413)
    assert "400,000,000 pixels" in too_many_pixels["detail"]
    assert_problem(post(client, owner, b"\x89PNG\r\n\x1a\n" + b"junk" * 100, "image/png"), 422)
    assert_problem(post(client, owner, b"GIF89a" + b"\0" * 100, "image/png"), 422)
    assert_problem(post(client, owner, picture().write_to_buffer(".png"), "text/plain"), 415)
    assert_problem(post(client, owner, bytes(20_000_001), "image/png"), 413)
    assert_problem(client.post("/v1/uploads", content=b"x" * 10), 401)


def test_a_signed_link_serves_the_blob_to_anyone_until_it_expires(
    client: TestClient[Any], container: Container, owner: dict[str, str]
) -> None:
    upload = post(client, owner, picture().write_to_buffer(".png"), "image/png").json()
    state = container.uploads.get(user_id(client, owner), UUID(upload["id"]))
    link = container.asset_signer.path(state.storage_key)
    fetched = client.get(link)  # no Authorization
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).hexdigest() == upload["sha256"]
    assert_problem(client.get(link[:-4] + "0000"), 403)  # another signature
    old = container.asset_signer.path(state.storage_key, now=time.time() - 7200)
    assert_problem(client.get(old), 403)  # expired an hour ago
    other_key = state.storage_key.replace(".png", ".webp")
    assert_problem(client.get(link.replace(state.storage_key, other_key)), 403)


def test_a_quote_resolves_the_reference_and_prices_the_input(
    client: TestClient[Any], container: Container, owner: dict[str, str]
) -> None:
    upload = post(client, owner, picture(1000, 500).write_to_buffer(".png"), "image/png").json()
    body = {"model": "real-esrgan", "params": {"image": f"upload:{upload['id']}", "scale": 4}}
    quote = client.post("/v1/generations/quote", json=body, headers=owner)
    assert quote.status_code == 200, quote.text
    # 0.20 credits per input megapixel: 1000 x 500 = 0.5 MP
    assert quote.json()["cost_credits"] == "0.1000"
    assert (quote.json()["params"]["width"], quote.json()["params"]["height"]) == (4000, 2000)
    stranger = bearer(container.users.create("other@example.com", "10").api_key)
    for headers, params in (
        (stranger, body["params"]),  # not theirs
        (owner, {"scale": 2}),  # missing
        (owner, {"image": f"upload:{upload['id']}", "scale": 4, "mask": "upload:x"}),
    ):
        refused = client.post("/v1/generations", json={**body, "params": params}, headers=headers)
        problem = assert_problem(refused, 422)
        assert problem["errors"][0]["field"] in ("params.image", "params.mask")
