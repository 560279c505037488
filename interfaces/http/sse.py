"""A stream of :class:`~interfaces.http.streams.Out` messages on the wire: Server-Sent Events,
or WebSocket JSON messages ``{"type", "id", "data"}``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
import structlog
from litestar.response import ServerSentEvent, ServerSentEventMessage

from interfaces.http.streams import HEARTBEAT, Out

#: How long an EventSource waits before it reconnects, in milliseconds.
RETRY_MS = 2000
log = structlog.get_logger(__name__)


def sse_response(stream: AsyncGenerator[Out, None]) -> ServerSentEvent:
    """``stream`` as Server-Sent Events; a heartbeat is a comment."""

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        try:
            # comments carry no data line: a browser would fire an empty "message" event
            yield ServerSentEventMessage(data=None, retry=RETRY_MS, comment="stream open")
            async for out in stream:
                if out is HEARTBEAT:
                    yield ServerSentEventMessage(data=None, comment="heartbeat")
                else:
                    yield ServerSentEventMessage(
                        data=msgspec.json.encode(out.data).decode(), event=out.type, id=str(out.id)
                    )
        except Exception as error:  # noqa: BLE001 - the client resumes from its last event id
            log.warning("feed.stream_failed", error=f"{type(error).__name__}: {error}")
        finally:  # the client went away or the stream ended: unsubscribe now, not at GC
            await stream.aclose()

    return ServerSentEvent(messages())


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
