"""What the pipeline needs from a video file (PyAV, whose wheel bundles FFmpeg and its codecs).

    first_frame     the first frame of the first video stream, decoded to 8-bit RGB: the
                    poster (what a ``<video poster>`` shows before playback, and what the viewer
                    sees first after it) and the cheapest frame to decode (a key frame alone)
    strip_metadata  the file remuxed into MP4, not re-encoded: the same streams, packets and
                    duration, but no container or stream tags (title, comment, creation time,
                    location, encoder, handler names), and the index (``moov``) ahead of the
                    media, so a browser starts playing before the whole file has arrived

Bad input raises :class:`av.FFmpegError` (``InvalidDataError`` for bytes that are no media),
or :class:`application.imaging.ProcessingFailed` for a file with no video in it.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import av
import av.container
import pyvips

from application.imaging import ProcessingFailed

MEDIA_TYPE = "video/mp4"
#: ``faststart`` moves the index to the front by rewriting the file by name, so the remux
#: writes to a temporary file (into memory it fails on close). ``bitexact`` leaves out the
#: muxer's own ``encoder`` tag.
MUXER_OPTIONS = {"movflags": "+faststart"}
CONTAINER_OPTIONS = {"fflags": "+bitexact"}
KEPT_STREAMS = ("video", "audio")


def _open(data: bytes) -> av.container.InputContainer:
    return av.open(io.BytesIO(data), mode="r")


def first_frame(data: bytes) -> pyvips.Image:
    """The first frame of the first video stream, 8-bit RGB in memory."""
    with _open(data) as container:
        if not container.streams.video:
            raise ProcessingFailed("the result is not a readable video: it has no video stream")
        frame = next(container.decode(container.streams.video[0]), None)
        if frame is None:
            raise ProcessingFailed("the result is not a readable video: it has no frames")
        rgb = frame.reformat(format="rgb24")
    plane, row = rgb.planes[0], rgb.width * 3
    pixels = bytes(plane)
    if plane.line_size != row:  # rows padded for alignment: drop the padding
        starts = range(0, plane.line_size * rgb.height, plane.line_size)
        pixels = b"".join(pixels[start : start + row] for start in starts)
    image = pyvips.Image.new_from_memory(pixels, rgb.width, rgb.height, 3, "uchar")
    return image.copy(interpretation="srgb")


def strip_metadata(data: bytes) -> bytes:
    """The video and audio streams remuxed into MP4 without tags, index first."""
    with tempfile.TemporaryDirectory(prefix="pixevo-video-") as scratch:
        path = Path(scratch) / "stripped.mp4"
        with (
            _open(data) as source,
            av.open(
                str(path),
                mode="w",
                format="mp4",
                options=MUXER_OPTIONS,
                container_options=CONTAINER_OPTIONS,
            ) as target,
        ):
            kept = [s for s in source.streams if s.type in KEPT_STREAMS]
            # copies the codec parameters, not the stream's tags
            copies = {s.index: target.add_stream_from_template(s) for s in kept}
            for packet in source.demux(kept):
                if packet.dts is None:  # the demuxer's empty end-of-stream packets
                    continue
                packet.stream = copies[packet.stream.index]
                target.mux(packet)
        return path.read_bytes()
