"""A video result on real PyAV and pyvips: the poster and thumbnail come from the first frame,
the served MP4 is the provider's streams without a single one of its tags, and what cannot be
read fails the generation instead of the worker."""

from __future__ import annotations

import io

import av
import pytest
import pyvips

from application.imaging import ProcessingFailed
from infrastructure.imaging import pipeline, video
from infrastructure.simulator import video as simulator_video
from infrastructure.simulator.render import picture

PROMPT = "a fox running through snow"
#: What the simulator writes into its files, as providers do (and the tags it makes the muxer add)
SOURCE_TAGS = {**simulator_video.METADATA, "title": PROMPT}
STREAM_TAGS = simulator_video.STREAM_METADATA
TELLING_BYTES = [b"fox running", b"51.5074", b"simulator", b"Simulator", b"Lavf", b"2026-11-30"]


@pytest.fixture(scope="module")
def source() -> bytes:
    return simulator_video.mp4(PROMPT, 3, 640, 360, duration_s=2)


def packets(data: bytes) -> list[tuple[str, bytes, int | None]]:
    with av.open(io.BytesIO(data)) as container:
        return [(p.stream.type, bytes(p), p.pts) for p in container.demux() if p.dts is not None]


def silence(frames: int = 5) -> list[av.AudioFrame]:
    made = []
    for number in range(frames):
        frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
        frame.planes[0].update(bytes(frame.planes[0].buffer_size))
        frame.sample_rate, frame.pts = 48000, number * 1024
        made.append(frame)
    return made


def with_audio(data: bytes, *, keep_video: bool = True) -> bytes:
    """The video's packets plus an AAC track, tagged like a provider's (or the audio alone)."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(out, "w", format="mp4") as target:
        target.metadata["title"] = PROMPT
        video_in = source.streams.video[0]
        video_out = target.add_stream_from_template(video_in) if keep_video else None
        audio = target.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for frame in silence():
            target.mux(audio.encode(frame))
        target.mux(audio.encode())
        for packet in source.demux(video_in):
            if video_out is not None and packet.dts is not None:
                packet.stream = video_out
                target.mux(packet)
    return out.getvalue()


def test_the_simulator_s_video_is_an_h264_mp4_carrying_a_provider_s_tags(source: bytes) -> None:
    assert source[4:8] == b"ftyp"
    with av.open(io.BytesIO(source)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 360)
        assert container.duration == 2 * av.time_base  # as long as the user paid for
        assert SOURCE_TAGS.items() <= dict(container.metadata).items()
        assert dict(stream.metadata)["handler_name"] == STREAM_TAGS["handler_name"]
    assert simulator_video.mp4(PROMPT, 3, 640, 360, duration_s=2) == source  # deterministic


def test_a_video_gets_a_poster_a_thumbnail_and_its_original_in_that_order(source: bytes) -> None:
    result = pipeline.process_video(source)
    assert [a.kind for a in result.artefacts] == ["thumb", "poster", "original"]
    made = {a.kind: a for a in result.artefacts}
    assert (result.width, result.height) == (640, 360)
    poster, thumb, original = made["poster"], made["thumb"], made["original"]
    assert (poster.width, poster.height, poster.format) == (640, 360, "webp")
    assert (thumb.width, thumb.height, thumb.format) == (256, 144, "webp")
    assert (original.width, original.height) == (640, 360)
    assert (original.format, original.media_type) == ("mp4", "video/mp4")
    for artefact in (poster, thumb):
        decoded = pyvips.Image.new_from_buffer(artefact.data, "")
        assert (decoded.width, decoded.height, decoded.get_n_pages()) == (
            artefact.width,
            artefact.height,
            1,
        )
    # the poster is the first frame: the picture the provider rendered (through H.264)
    shown = pyvips.Image.new_from_buffer(poster.data, "")
    assert (shown - picture(PROMPT, 3, 640, 360)).abs().avg() < 12
    assert result.blurhash
    assert 0 <= result.quality_score <= 1


def test_the_served_mp4_has_none_of_the_source_s_tags_and_the_same_packets(
    source: bytes,
) -> None:
    served = pipeline.process_video(source).artefacts[-1].data
    with av.open(io.BytesIO(served)) as container:
        tags = dict(container.metadata)
        stream = container.streams.video[0]
        stream_tags = dict(stream.metadata)
        assert container.duration == 2 * av.time_base
        assert stream.frames == 4
    assert not set(tags) & {*SOURCE_TAGS, "encoder", "location-eng"}, tags
    assert not set(stream_tags.values()) & set(STREAM_TAGS.values()), stream_tags
    assert "creation_time" not in stream_tags
    for marker in TELLING_BYTES:
        assert marker not in served, marker
    assert packets(served) == packets(source)  # remuxed, not re-encoded
    assert served.index(b"moov") < served.index(b"mdat")  # playable while it downloads
    assert video.strip_metadata(served) == served  # a re-run stores the same file


def test_an_audio_track_is_kept_and_a_frame_with_padded_rows_is_read_whole() -> None:
    odd = simulator_video.mp4(PROMPT, 5, 250, 140, duration_s=1)  # rgb24 rows padded to 768
    served = video.strip_metadata(with_audio(odd))
    assert sorted(kind for kind, _, _ in packets(served)) == sorted(
        kind for kind, _, _ in packets(with_audio(odd))
    )
    assert {kind for kind, _, _ in packets(served)} == {"video", "audio"}
    assert PROMPT.encode() not in served
    frame = video.first_frame(odd)
    assert (frame.width, frame.height) == (250, 140)
    assert (frame - picture(PROMPT, 5, 250, 140)).abs().avg() < 12


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x18ftypmp42 not really a video", "not a readable video"),
        (b"", "not a readable video"),
        ("audio only", "has no video stream"),
    ],
)
def test_what_is_not_a_readable_video_fails_processing(
    source: bytes, data: bytes | str, message: str
) -> None:
    if data == "audio only":
        data = with_audio(source, keep_video=False)
    assert isinstance(data, bytes)
    with pytest.raises(ProcessingFailed, match=message):
        pipeline.PyvipsPipeline().process(data, video=True)
