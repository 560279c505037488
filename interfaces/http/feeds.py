"""Live feeds: a generation's events and a user's, over SSE and WebSocket.

A stream subscribes to its Redis channel *first*, then reads what the client missed from the
feed table, then forwards live messages, dropping any whose position it has already sent. Since
the projection publishes only after it commits, anything published after the subscription is
either in the stored read or arrives live: no gap and no duplicate across the hand-over. Every
``PIXEVO_SSE_HEARTBEAT_S`` a comment keeps proxies from closing the connection, and every few
heartbeats (jittered, and at most :data:`CONCURRENT_READS` at once per process) a catch-up read
covers messages Redis lost (a restart, a publisher that died before it published).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import msgspec
import structlog
from litestar import Request, Response, get, post
from litestar.channels import ChannelsPlugin, Subscriber
from litestar.connection import WebSocket
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.handlers import websocket_stream
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from psycopg.rows import dict_row

from application.assets import preview_key
from application.generations import GenerationNotFound
from application.live import (
    FINAL_TYPES,
    SLOW_NOTICE,
    LiveMessage,
    decode,
    generation_channel,
    user_channel,
)
from application.users import User
from domain.ids import uuid7_time
from interfaces.bootstrap import Container
from interfaces.http import dto
from interfaces.http.auth import STREAM_TOKEN_OPT
from interfaces.http.generation_routes import view_of_row
from interfaces.http.problems import ProblemError
from projections import generation_queries
from projections.generations import GenerationsView, message_of, row_from_json
from projections.model_timings import Timings

#: Catch-up reads happen every this many heartbeats (jittered by 20 %).
CATCH_UP_EVERY = 4
#: Stored-feed reads one API process runs at once; the rest wait their turn, not the pool's.
CONCURRENT_READS = 8
ESTIMATE_EVERY_S = 0.5
#: How far back ``GET /v1/events`` resumes from a ``Last-Event-ID``.
RESUME_WINDOW = timedelta(days=7)
SUBSCRIBE_TIMEOUT_S = 5.0
#: At most this many stored messages per read; the rest follow at the next heartbeat.
CATCH_UP_LIMIT = 5000
FEED = f"{GenerationsView.live_schema()}.feed"

LastEventId = Annotated[
    str | None, HeaderParameter(name="Last-Event-ID", max_length=30, required=False)
]
LastEventIdQuery = Annotated[str | None, QueryParameter(name="last_event_id", max_length=30)]
Token = Annotated[str | None, QueryParameter(name="token", max_length=2000)]


@dataclass(frozen=True, slots=True)
class Out:
    """One message for the client; ``id`` is the position to resume after."""

    type: str
    id: int
    data: dict[str, Any]


HEARTBEAT = Out("heartbeat", 0, {})
log = structlog.get_logger(__name__)


def _position(header: str | None, query: str | None) -> int | None:
    value = header if header is not None else query
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdecimal()):
        raise ProblemError(400, "Last-Event-ID must be the id of an event this API sent")
    return int(value)


# -- stored feed -----------------------------------------------------------------------------


async def _stored(
    state: State, where: str, params: list[Any], limit: int = CATCH_UP_LIMIT
) -> list[LiveMessage]:
    async with state.feed_reads, state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            f"SELECT * FROM {FEED} WHERE {where} ORDER BY position LIMIT %s", [*params, limit]
        )
        return [message_of(row) for row in await cur.fetchall()]


async def generation_feed(state: State, generation_id: UUID, after: int = 0) -> list[LiveMessage]:
    made = uuid7_time(generation_id) - timedelta(seconds=1)  # nothing happens before its id
    return await _stored(
        state,
        "generation_id = %s AND created_at >= %s AND position > %s",
        [generation_id, made, after],
    )


async def user_feed(state: State, user_id: UUID, after: int) -> list[LiveMessage]:
    since = datetime.now(UTC) - RESUME_WINDOW
    return await _stored(
        state,
        "user_id = %s AND created_at >= %s AND position > %s",
        [user_id, since, after],
    )


async def user_head(state: State, user_id: UUID) -> int:
    since = datetime.now(UTC) - RESUME_WINDOW
    async with state.feed_reads, state.pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT coalesce(max(position), 0) FROM {FEED} "
            "WHERE user_id = %s AND created_at >= %s",
            [user_id, since],
        )
        found = await cur.fetchone()
    return int(found[0]) if found else 0


# -- the streams -----------------------------------------------------------------------------


def _render(message: LiveMessage) -> Out:
    data = message.data
    if message.type in FINAL_TYPES:  # the whole generation, as GET /v1/generations/{id} has it
        data = msgspec.to_builtins(view_of_row(row_from_json(data)))
    return Out(message.type, message.position or 0, data)


class Beat:
    """When a stream sends its keep-alive comment, and when it re-reads the store."""

    def __init__(self, heartbeat_s: float) -> None:
        self.heartbeat_s = heartbeat_s
        self.catch_up_s = heartbeat_s * CATCH_UP_EVERY
        now = time.monotonic()
        self.next_beat = now + heartbeat_s
        self.next_catch_up = now + self.catch_up_s * random.uniform(0.8, 1.2)  # noqa: S311

    def wait(self) -> float:
        return max(self.next_beat - time.monotonic(), 0.0)

    def due(self) -> tuple[bool, bool]:
        """(send a heartbeat now, catch up now)."""
        now = time.monotonic()
        beat = now >= self.next_beat
        if beat:
            self.next_beat = now + self.heartbeat_s
        catch_up = now >= self.next_catch_up
        if catch_up:
            self.next_catch_up = now + self.catch_up_s * random.uniform(0.8, 1.2)  # noqa: S311
        return beat, catch_up


class Subscription:
    """A subscriber's Redis channel, drained into a queue the stream reads with a timeout."""

    def __init__(self, channels: ChannelsPlugin, channel: str) -> None:
        self.channels, self.channel = channels, channel
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._stack = AsyncExitStack()
        self._subscriber: Subscriber | None = None

    async def open(self, lock: asyncio.Lock) -> Subscription:
        # one at a time: concurrent first subscribes each open a pub/sub connection in
        # redis-py, and only the last one is ever read
        async with lock:
            try:  # a hung Redis must not hold every new stream behind this lock
                self._subscriber = await asyncio.wait_for(
                    self.channels.subscribe([self.channel]), SUBSCRIBE_TIMEOUT_S
                )
            except TimeoutError:
                raise ProblemError(503, "live updates are unavailable; try again shortly") from None
        await self._stack.enter_async_context(
            self._subscriber.run_in_background(self.queue.put, join=False)
        )
        return self

    async def close(self) -> None:
        await self._stack.aclose()
        if self._subscriber is not None:
            await self.channels.unsubscribe(self._subscriber)
            self._subscriber = None


class _Seen:
    """What a stream has sent, and what it knows for estimating progress.

    ``position`` is the highest position sent (the id a client resumes after). ``read_to`` is
    how far the stored feed has been read: every row at or below it has been seen, so catch-up
    reads start there, not at ``position`` - a live message that overtook a lost one does not
    hide it. ``sent`` holds what went out above ``read_to``.
    """

    def __init__(self, position: int) -> None:
        self.position = position
        self.read_to = position
        self.sent: set[int] = set()
        self.model: str | None = None
        self.running_since: datetime | None = None
        self.real_progress = False
        self.finished = False

    def take(self, message: LiveMessage) -> Out | None:
        """The message to send, or ``None`` for one already sent."""
        if message.position is None:  # provider progress: not stored, resumes at ``position``
            self.real_progress = True
            return Out(message.type, self.position, message.data)
        if message.position <= self.read_to or message.position in self.sent:
            return None
        self.sent.add(message.position)
        out = _render(message)
        if message.position < self.position:  # a late one: keep the client's resume point
            return Out(out.type, self.position, out.data)
        self.position = message.position
        self.note(message)
        return out

    def take_all(self, messages: list[LiveMessage]) -> list[Out]:
        return [out for message in messages if (out := self.take(message)) is not None]

    def caught_up(self, messages: list[LiveMessage], *, complete: bool = True) -> list[Out]:
        """Takes a stored read's rows; ``complete``: the read had every row above ``read_to``."""
        outs = self.take_all(messages)
        if complete and messages:
            self.read_to = max(self.read_to, *(m.position or 0 for m in messages))
            self.sent = {p for p in self.sent if p > self.read_to}
        return outs

    def note(self, message: LiveMessage) -> None:
        if message.type == "status":
            running = message.data.get("status") == "running"
            self.running_since = datetime.fromisoformat(message.data["at"]) if running else None
            self.model = message.data.get("model")
        self.finished = message.type in FINAL_TYPES

    def estimating(self, streaming_models: frozenset[str]) -> bool:
        """Whether to estimate: running on a model that reports no progress of its own."""
        return (
            self.running_since is not None
            and not self.real_progress
            and self.model not in streaming_models
        )


async def generation_stream(
    state: State,
    generation_id: UUID,
    last: int | None,
    stored: list[LiveMessage],
    queue: asyncio.Queue[bytes],
) -> AsyncGenerator[Out, None]:
    """The events of one generation: missed ones from the store, then live, then it closes."""
    if last is None and stored and stored[-1].type in FINAL_TYPES:
        yield _render(stored[-1])  # a finished generation: its final event, and done
        return
    seen = _Seen(last or 0)
    for message in stored:
        seen.note(message)  # what ran when, even from events the client already has
    seen.finished = False
    for out in seen.caught_up(stored):
        yield out
    streaming: frozenset[str] = state.streaming_models
    beat = Beat(state.heartbeat_s)
    last_estimate = time.monotonic()
    while not seen.finished:
        wait = beat.wait()
        if seen.estimating(streaming):
            wait = min(wait, ESTIMATE_EVERY_S - (time.monotonic() - last_estimate))
        try:
            raw = await asyncio.wait_for(queue.get(), timeout=max(wait, 0.0))
        except TimeoutError:
            heartbeat, catch_up = beat.due()
            if heartbeat:
                yield HEARTBEAT
            if catch_up:  # whatever Redis did not bring
                rows = await generation_feed(state, generation_id, seen.read_to)
                for out in seen.caught_up(rows, complete=len(rows) < CATCH_UP_LIMIT):
                    yield out
            now = time.monotonic()
            if seen.estimating(streaming) and now - last_estimate >= ESTIMATE_EVERY_S:
                last_estimate = now
                yield await _estimate(state.timings, seen, generation_id)
            continue
        if (live := seen.take(decode(raw))) is not None:
            yield live


async def _estimate(timings: Timings, seen: _Seen, generation_id: UUID) -> Out:
    guess = await timings.estimate(seen.model or "", seen.running_since or datetime.now(UTC))
    data: dict[str, Any] = {
        "generation_id": str(generation_id),
        "percent": guess.percent,
        "estimated": True,
    }
    if guess.slow:
        data["notice"] = SLOW_NOTICE
    return Out("progress", seen.position, data)


async def user_stream(
    state: State, user_id: UUID, last: int | None, queue: asyncio.Queue[bytes]
) -> AsyncGenerator[Out, None]:
    """Every change to the user's generations: missed ones (with a Last-Event-ID), then live."""
    seen = _Seen(last if last is not None else await user_head(state, user_id))
    if last is not None:
        rows = await user_feed(state, user_id, seen.read_to)
        for out in seen.caught_up(rows, complete=len(rows) < CATCH_UP_LIMIT):
            yield out
    beat = Beat(state.heartbeat_s)
    while True:
        try:
            raw = await asyncio.wait_for(queue.get(), timeout=beat.wait())
        except TimeoutError:
            heartbeat, catch_up = beat.due()
            if heartbeat:
                yield HEARTBEAT
            if catch_up:
                rows = await user_feed(state, user_id, seen.read_to)
                for out in seen.caught_up(rows, complete=len(rows) < CATCH_UP_LIMIT):
                    yield out
            continue
        if (live := seen.take(decode(raw))) is not None:
            yield live


async def _closing(
    stream: AsyncGenerator[Out, None], subscription: Subscription
) -> AsyncGenerator[Out, None]:
    """``stream``, unsubscribing when it ends or the client goes away."""
    try:
        async for out in stream:
            yield out
    finally:
        await subscription.close()


def _sse(stream: AsyncGenerator[Out, None]) -> ServerSentEvent:
    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        try:
            # comments carry no data line: a browser would fire an empty "message" event
            yield ServerSentEventMessage(data=None, retry=2000, comment="stream open")
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


async def _open_generation(
    container: Container,
    state: State,
    channels: ChannelsPlugin,
    user: User,
    generation_id: UUID,
    last: int | None,
) -> tuple[AsyncGenerator[Out, None], bool]:
    """(the stream, whether the client already has everything it will ever get)."""
    if generation_id.version != 7:
        raise ProblemError(404, f"no generation {generation_id}")
    subscription = await Subscription(
        channels, generation_channel(container.settings.redis_namespace, generation_id)
    ).open(state.subscribe_lock)
    try:
        stored = await generation_feed(state, generation_id)
        if stored:
            if stored[0].user_id != user.id:
                raise ProblemError(404, f"no generation {generation_id}")
        else:  # not projected yet (it was just made), or no such generation of this user
            try:
                await asyncio.to_thread(container.generations.generation, user.id, generation_id)
            except GenerationNotFound:
                raise ProblemError(404, f"no generation {generation_id}") from None
        done = (
            last is not None
            and bool(stored)
            and stored[-1].type in FINAL_TYPES
            and (stored[-1].position or 0) <= last
        )
        if done:  # nothing will ever come: no stream (a never-started generator's finally
            await subscription.close()  # would not run, so do not rely on closing one)
    except BaseException:
        await subscription.close()
        raise
    stream = generation_stream(state, generation_id, last, stored, subscription.queue)
    return _closing(stream, subscription), done


async def _open_user(
    container: Container, state: State, channels: ChannelsPlugin, user: User, last: int | None
) -> AsyncGenerator[Out, None]:
    subscription = await Subscription(
        channels, user_channel(container.settings.redis_namespace, user.id)
    ).open(state.subscribe_lock)
    return _closing(user_stream(state, user.id, last, subscription.queue), subscription)


# -- routes ----------------------------------------------------------------------------------

_STREAM_OPT = {STREAM_TOKEN_OPT: True}


@get("/v1/generations/{generation_id:uuid}/events", opt=_STREAM_OPT)
async def generation_events(
    request: Request[User, Any, Any],
    state: State,
    channels: NamedDependency[ChannelsPlugin],
    generation_id: FromPath[UUID],
    container: NamedDependency[Container],
    last_event_id: LastEventId = None,
    last_event_id_query: LastEventIdQuery = None,
    token: Token = None,  # noqa: ARG001 - read by the authentication middleware
) -> Response[Any]:
    """Server-Sent Events of one generation: ``status``, ``progress`` and a final event."""
    last = _position(last_event_id, last_event_id_query)
    stream, done = await _open_generation(
        container, state, channels, request.user, generation_id, last
    )
    if done:  # 204 tells an EventSource to stop reconnecting
        return Response(None, status_code=204)
    return _sse(stream)


@get("/v1/events", opt=_STREAM_OPT)
async def user_events(
    request: Request[User, Any, Any],
    state: State,
    channels: NamedDependency[ChannelsPlugin],
    container: NamedDependency[Container],
    last_event_id: LastEventId = None,
    last_event_id_query: LastEventIdQuery = None,
    token: Token = None,  # noqa: ARG001 - read by the authentication middleware
) -> ServerSentEvent:
    """Server-Sent Events of every change to the caller's generations."""
    last = _position(last_event_id, last_event_id_query)
    return _sse(await _open_user(container, state, channels, request.user, last))


@websocket_stream("/v1/ws", opt=_STREAM_OPT)
async def user_socket(
    socket: WebSocket[User, Any, Any],
    channels: NamedDependency[ChannelsPlugin],
    container: NamedDependency[Container],
    last_event_id_query: LastEventIdQuery = None,
    token: Token = None,  # noqa: ARG001 - read by the authentication middleware
) -> AsyncGenerator[dict[str, Any], None]:
    """The user's feed as JSON messages ``{"type", "id", "data"}``."""
    last = _position(None, last_event_id_query)
    stream = await _open_user(container, socket.app.state, channels, socket.user, last)
    try:
        async for out in stream:
            if out is not HEARTBEAT:
                yield {"type": out.type, "id": str(out.id), "data": out.data}
    except Exception as error:  # noqa: BLE001 - the client resumes from its last event id
        log.warning("feed.stream_failed", error=f"{type(error).__name__}: {error}")
    finally:
        await stream.aclose()


@get("/v1/generations/{generation_id:uuid}/previews/{number:int}", opt=_STREAM_OPT)
async def preview(
    request: Request[User, Any, Any],
    state: State,
    generation_id: FromPath[UUID],
    number: FromPath[int],
    container: NamedDependency[Container],
    token: Token = None,  # noqa: ARG001 - read by the authentication middleware
) -> Response[bytes]:
    """A streaming provider's preview, as the ``preview_url`` of a ``progress`` event."""
    row = await generation_queries.generation(state.pool, request.user.id, generation_id)
    if row is None or row["status"] == "blocked":
        raise ProblemError(404, f"no generation {generation_id}")
    try:
        data = await asyncio.to_thread(container.blobs.get, preview_key(generation_id, number))
    except (FileNotFoundError, ValueError):
        raise ProblemError(404, f"generation {generation_id} has no preview {number}") from None
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
    )


@post("/v1/stream-tokens", status_code=201)
async def stream_token(request: Request[User, Any, Any], state: State) -> dto.StreamToken:
    """A short-lived token for ``?token=`` on the feeds, bound to the caller."""
    token, expires = state.stream_tokens.issue(request.user.id)
    return dto.StreamToken(token=token, expires_at=expires)


ROUTES = [generation_events, user_events, user_socket, preview, stream_token]
