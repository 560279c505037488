"""A stream of :class:`~interfaces.http.streams.Out` messages on the wire: Server-Sent Events,
or WebSocket JSON messages ``{"type", "id", "data"}``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec
import structlog
from litestar.response import ServerSentEvent, Stream

from interfaces.http.streams import HEARTBEAT, Out

#: How long an EventSource waits before it reconnects, in milliseconds.
RETRY_MS = 2000
# comments carry no data line: a browser would fire an empty "message" event
OPENED = f": stream open\r\nretry: {RETRY_MS}\r\n\r\n".encode()
BEAT = b": heartbeat\r\n\r\n"
log = structlog.get_logger(__name__)
_encode = msgspec.json.Encoder().encode


def event_bytes(out: Out) -> bytes:
    """One event as SSE: its id (a position: digits and dots), its type (a fixed word) and its
    data as one line of JSON (which escapes every line break)."""
    return b"id: %s\r\nevent: %s\r\ndata: %s\r\n\r\n" % (
        str(out.id).encode(),
        out.type.encode(),
        _encode(out.data),
    )


class EventStream(ServerSentEvent):
    """Server-Sent Events already encoded: each chunk goes out as it is, with no per-event
    objects and no thread hop to start (what :class:`ServerSentEvent` does for its content)."""

    def __init__(self, chunks: AsyncGenerator[bytes, None]) -> None:
        Stream.__init__(self, chunks, media_type="text/event-stream")
        self.headers.setdefault("Cache-Control", "no-cache")
        self.headers["Connection"] = "keep-alive"
        self.headers["X-Accel-Buffering"] = "no"


def sse_response(stream: AsyncGenerator[Out, None]) -> ServerSentEvent:
    """``stream`` as Server-Sent Events; a heartbeat is a comment."""

    async def chunks() -> AsyncGenerator[bytes, None]:
        try:
            yield OPENED
            async for out in stream:
                yield BEAT if out is HEARTBEAT else event_bytes(out)
        except Exception as error:  # noqa: BLE001 - the client resumes from its last event id
            log.warning("feed.stream_failed", error=f"{type(error).__name__}: {error}")
        finally:  # the client went away or the stream ended: unsubscribe now, not at GC
            await stream.aclose()

    return EventStream(chunks())


async def socket_messages(
    stream: AsyncGenerator[Out, None],
) -> AsyncGenerator[dict[str, Any], None]:
    """``stream`` as WebSocket JSON messages, without the heartbeats."""
    try:
        async for out in stream:
            if out is not HEARTBEAT:
                yield {"type": out.type, "id": str(out.id), "data": out.data}
    except Exception as error:  # noqa: BLE001 - the client resumes from its last event id
        log.warning("feed.stream_failed", error=f"{type(error).__name__}: {error}")
    finally:
        await stream.aclose()
