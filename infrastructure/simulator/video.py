"""What the simulator's video models deliver: an MP4 (H.264, yuv420p) as real providers do.

The frames pan across :func:`render.picture` (rendered once: a slow pan costs the encoder
little), two a second for the requested duration, so the file lasts as long as the user paid
for. Same inputs, byte-identical file
(one encoder thread, ``+bitexact``). Like a real provider's, the file carries container and
stream metadata (a title with the prompt, a comment, a creation time, a location): the
platform's pipeline must strip it before serving.
"""

from __future__ import annotations

import io

import av

from infrastructure.simulator.render import picture

FRAMES_PER_SECOND = 2
PAN_STEPS = 40  # frames to pan across the whole width
#: Small files quickly: the simulator encodes on every fetch.
ENCODER_OPTIONS = {"preset": "veryfast", "crf": "32", "threads": "1"}
#: What a provider writes into its files and the platform must not pass on.
METADATA = {
    "comment": "rendered by the pixevo provider simulator",
    "creation_time": "2026-11-30T12:00:00.000000Z",
    "location": "+51.5074-000.1278/",
}
STREAM_METADATA = {"title": "simulator video track", "handler_name": "SimulatorVideoHandler"}


def mp4(prompt: str, seed: int, width: int, height: int, duration_s: int = 5) -> bytes:
    """An H.264 MP4 of ``duration_s`` seconds (at least one frame)."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        container.metadata.update({"title": prompt, **METADATA})
        stream = container.add_stream("libx264", rate=FRAMES_PER_SECOND)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = dict(ENCODER_OPTIONS)
        stream.metadata.update(STREAM_METADATA)
        still = picture(prompt, seed, width, height).bandjoin(255).copy_memory()
        for number in range(max(1, duration_s * FRAMES_PER_SECOND)):
            panned = still.wrap(x=number * width // PAN_STEPS, y=0)
            frame = av.VideoFrame.from_bytes(bytes(panned.write_to_memory()), width, height, "rgba")
            frame.pts = number
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder
    return out.getvalue()
