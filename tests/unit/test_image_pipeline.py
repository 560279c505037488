"""The image pipeline on real pyvips: metadata never survives, sizes and formats are as
promised, the blurhash has the image's proportions, and the quality score means something."""

from __future__ import annotations

import io

import blurhash
import pytest
import pyvips
from PIL import Image

from infrastructure.imaging import pipeline

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>'
    b"Jane Photographer</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>"
)
FIELDS = ("exif-data", "xmp-data", "iptc-data", "icc-profile-data", "jpeg-comment")


def p3_profile() -> bytes:
    image = pyvips.Image.black(4, 4, bands=3).copy(interpretation="srgb")
    return bytes(image.icc_export(output_profile="p3").get("icc-profile-data"))


def photo(width: int = 640, height: int = 480, *, fmt: str = "JPEG") -> bytes:
    """A textured picture carrying EXIF (with GPS), XMP, a comment and a Display P3 profile."""
    noise = pyvips.Image.perlin(width, height, cell_size=64) * 100 + 128
    rgb = noise.bandjoin([noise * 0.7 + 30, 255 - noise]).cast("uchar")
    picture = Image.frombytes("RGB", (width, height), bytes(rgb.write_to_memory()))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0131] = "Camera App 1.0"  # Software
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 39.0)})
    out = io.BytesIO()
    picture.save(
        out, fmt, exif=exif, xmp=XMP, icc_profile=p3_profile(), comment=b"shot at home", quality=92
    )
    return out.getvalue()


def test_the_source_really_carries_what_must_be_stripped() -> None:
    source = pyvips.Image.new_from_buffer(photo(), "")
    for name in ("exif-data", "xmp-data", "icc-profile-data"):
        assert source.get_typeof(name) != 0, name
    assert b"GPS" in bytes(source.get("exif-data")) or source.get_typeof("exif-ifd3-GPSLatitude")


def test_no_artefact_keeps_exif_gps_xmp_icc_or_comments() -> None:
    result = pipeline.process(photo(), "jpeg")
    assert [a.kind for a in result.artefacts] == list(pipeline.IMAGE_KINDS)
    assert len(result.artefacts) == 6
    for artefact in result.artefacts:
        image = pyvips.Image.new_from_buffer(artefact.data, "")
        kept = [name for name in image.get_fields() if name in FIELDS or name.startswith("exif-")]
        assert kept == [], (artefact.kind, kept)
        for marker in (b"Exif", b"GPS", b"xmpmeta", b"Jane Photographer", b"shot at home"):
            assert marker not in artefact.data, (artefact.kind, marker)


def test_the_p3_profile_is_converted_to_srgb_not_just_dropped() -> None:
    data = photo()
    converted = pipeline.process(data, "png").artefacts[-1]
    naive = pyvips.Image.new_from_buffer(data, "")  # pixels as stored, profile ignored
    out = pyvips.Image.new_from_buffer(converted.data, "")
    assert out.interpretation == "srgb"
    assert abs(out.avg() - naive.avg()) > 0.1  # P3 -> sRGB moved the colours
    expected = naive.icc_transform("srgb", embedded=True)
    assert abs(out.avg() - expected.avg()) < 1.0


@pytest.mark.parametrize(("width", "height"), [(1024, 1024), (1280, 720), (600, 900)])
def test_each_artefact_has_its_promised_size_and_format(width: int, height: int) -> None:
    result = pipeline.process(photo(width, height, fmt="PNG"), "webp")
    made = {a.kind: a for a in result.artefacts}
    longest = max(width, height)
    for kind, box in (("thumb", 256), ("preview", 512)):
        a = made[kind]
        assert max(a.width, a.height) == min(box, longest)
        assert a.width / a.height == pytest.approx(width / height, rel=0.02)
        assert a.format == "webp"
        assert a.data[8:12] == b"WEBP"
    for kind in ("full", "modern", "original"):
        assert (made[kind].width, made[kind].height) == (width, height)
    card = (made["social"].width, made["social"].height)
    assert card == pipeline.social_size(width, height)
    assert (made["social"].format, made["social"].data[:2]) == ("jpeg", b"\xff\xd8")
    assert made["full"].data[8:12] == b"WEBP"
    if pipeline.avif_available():
        assert made["modern"].format == "avif"
        assert made["modern"].data[4:12] == b"ftypavif"
    else:
        assert made["modern"].data[:2] == b"\xff\xd8"
    assert made["original"].format == "webp"
    for a in result.artefacts:  # what is recorded is what was made
        decoded = pyvips.Image.new_from_buffer(a.data, "")
        assert (decoded.width, decoded.height) == (a.width, a.height)
    # the blurhash's components follow the proportions; it decodes to that shape
    x, y = blurhash.components(result.blurhash)
    assert x / y == pytest.approx(width / height, rel=0.35)
    small = blurhash.decode(result.blurhash, x * 8, y * 8)
    assert (len(small[0]), len(small)) == (x * 8, y * 8)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "avif"])
def test_the_original_comes_in_the_requested_format(fmt: str) -> None:
    original = pipeline.process(photo(320, 240, fmt="PNG"), fmt).artefacts[-1]
    loader = pyvips.Image.new_from_buffer(original.data, "").get("vips-loader")
    expected = {"png": "pngload", "jpeg": "jpegload", "webp": "webpload", "avif": "heifload"}
    if fmt == "avif" and not pipeline.avif_available():
        pytest.skip("this libvips has no AVIF encoder")
    assert loader.startswith(expected[fmt])


def test_quality_prefers_sharp_well_exposed_images() -> None:
    sharp = pyvips.Image.new_from_buffer(photo(512, 512), "")
    blurred = sharp.gaussblur(6)
    dark = (sharp * 0.08).cast("uchar")
    scores = {
        name: pipeline.quality_of(image).score
        for name, image in (("sharp", sharp), ("blurred", blurred), ("dark", dark))
    }
    assert all(0 <= s <= 1 for s in scores.values())
    assert scores["sharp"] > scores["blurred"]
    assert scores["sharp"] > scores["dark"]
    flat = pyvips.Image.black(256, 256, bands=3) + 128
    assert pipeline.quality_of(flat.cast("uchar")).entropy == 0


def test_the_social_card_fills_1200x630_with_the_interesting_part() -> None:
    """A card crawlers show at 1.91:1: 1200x630 from any source that fills it, as much of it as
    a smaller source fills (never enlarged), and the crop follows the subject (here a bright
    disc near the top of a tall image)."""
    for (width, height), size in {
        (2000, 500): (952, 500),  # the height limits it
        (600, 900): (600, 315),
        (256, 256): (256, 134),
        (1376, 768): (1200, 630),
    }.items():
        card = pipeline.social_card(pyvips.Image.new_from_buffer(photo(width, height), ""))
        decoded = pyvips.Image.new_from_buffer(card.data, "")
        assert (card.width, card.height) == (decoded.width, decoded.height)
        assert (card.width, card.height) == pipeline.social_size(width, height)
        assert (card.width, card.height) == size
        assert card.width <= width and card.height <= height  # never enlarged
        assert card.width / card.height == pytest.approx(1200 / 630, rel=0.01)
        assert (card.kind, card.format, card.media_type) == ("social", "jpeg", "image/jpeg")
    xy = pyvips.Image.xyz(600, 1200)
    disc = ((xy[0] - 300) ** 2 + (xy[1] - 200) ** 2 < 120**2).ifthenelse([255, 40, 40], [60] * 3)
    card = pipeline.social_card(disc.cast("uchar").copy(interpretation="srgb"))
    decoded = pyvips.Image.new_from_buffer(card.data, "")
    assert (decoded.width, decoded.height) == (600, 315)
    assert decoded.extract_area(250, 107, 100, 100).avg() > 100  # the disc is in the middle
