"""Live feeds: a generation's events and a user's, as streams of :class:`Out` messages.

A stream subscribes to its Redis channel *first*, then reads what the client missed from the
feed table, then forwards live messages, dropping any whose position it has already sent. Since
the projection publishes only after it commits, anything published after the subscription is
either in the stored read or arrives live: no gap and no duplicate across the hand-over. Every
``PIXEVO_SSE_HEARTBEAT_S`` a :data:`HEARTBEAT` keeps proxies from closing the connection, and
every few heartbeats (jittered, and at most ``concurrent_reads`` at once per process) a catch-up
read covers messages Redis lost (a restart, a publisher that died before it published).

A process holds one Redis subscription per channel, however many of its streams follow it
(a user's tabs, a generation watched twice): :class:`Hub` hands each message to every such
stream's :class:`Inbox` as it arrives, with no queue or task per stream. An idle stream is
one coroutine waiting on one future, so a process holds thousands of them.

How the messages go over the wire (SSE, WebSocket) is :mod:`interfaces.http.sse`'s business.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

import msgspec
import structlog
from litestar.channels import ChannelsPlugin, Subscriber
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from application.live import (
    FINAL_TYPES,
    SLOW_NOTICE,
    LiveMessage,
    decode,
    generation_channel,
    user_channel,
)
from interfaces.http.problems import ProblemError
from interfaces.http.views import view_of_row
from projections import generation_queries, position_queries
from projections.feed_queries import GENERATIONS, StoredFeed
from projections.generations import DERIVATIVES, GenerationsView, row_from_json
from projections.model_timings import Timings
from projections.workflow_queries import RUNS

T = TypeVar("T")
log = structlog.get_logger(__name__)

#: Catch-up reads happen every this many heartbeats (jittered by 20 %).
CATCH_UP_EVERY = 4
ESTIMATE_EVERY_S = 0.5
#: How far back ``GET /v1/events`` resumes from a ``Last-Event-ID``.
RESUME_WINDOW = timedelta(days=7)
SUBSCRIBE_TIMEOUT_S = 5.0
#: Messages an inbox keeps for a stream that does not take them; older ones are dropped (the
#: next catch-up read brings them back).
INBOX_BACKLOG = 1000
#: At most this many stored messages per read; the rest follow at the next heartbeat.
CATCH_UP_LIMIT = 5000


@dataclass(frozen=True, slots=True)
class Out:
    """One message for the client; ``id`` is the position to resume after."""

    type: str
    #: A position; on the user feed, ``"<generations position>.<workflows position>"``.
    id: int | str
    data: dict[str, Any]


HEARTBEAT = Out("heartbeat", 0, {})
#: The messages that carry the whole generation.
WHOLE_TYPES = FINAL_TYPES | {DERIVATIVES}
#: How long a completed generation's stream stays open for its ``derivatives`` message (they
#: follow in well under a second; a result processed before they existed never gets one).
DERIVATIVES_WAIT = timedelta(seconds=60)


def _last_word(message: LiveMessage, now: datetime) -> bool:
    """Whether nothing more will come for a generation after ``message``: an end other than
    ``completed``, its derivatives, or a completion that has no derivatives to wait for (served
    from the cache, with its source's) or waited for them past :data:`DERIVATIVES_WAIT`."""
    if message.type != "completed":
        return message.type in WHOLE_TYPES
    completed_at = message.data.get("completed_at")
    return (
        bool(message.data.get("served_from_cache"))
        or completed_at is None
        or now - datetime.fromisoformat(completed_at) > DERIVATIVES_WAIT
    )


def _ended(stored: list[LiveMessage]) -> LiveMessage | None:
    """A finished generation's last word (``None`` while more may come): its final message,
    carrying the generation as the latest stored message has it (derivatives follow it)."""
    if not stored or not _last_word(stored[-1], datetime.now(UTC)):
        return None
    final = next((m for m in reversed(stored) if m.type in FINAL_TYPES), stored[-1])
    return msgspec.structs.replace(final, data=stored[-1].data, position=stored[-1].position)


def _render(message: LiveMessage) -> Out:
    data = message.data
    if message.type in WHOLE_TYPES:  # the whole generation, as GET /v1/generations/{id} has it
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


class Inbox(Generic[T]):
    """What has arrived for one stream and it has not taken yet; the stream waits on it."""

    __slots__ = ("_waiter", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self.items.append(item)
        if len(self.items) > INBOX_BACKLOG:  # a stream that stopped taking: keep the newest
            del self.items[:-INBOX_BACKLOG]
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self, *, within: float) -> list[T]:
        """Everything that arrived, oldest first; waits up to ``within`` seconds for something
        (an empty list: nothing came)."""
        if not self.items and within > 0:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(within, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        items, self.items = self.items, []
        return items


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Receiver(Protocol):
    """Where a channel's messages go: an :class:`Inbox` of bytes, or one of its adapters."""

    def put(self, item: bytes, /) -> None: ...


class Tagged:
    """A receiver that puts ``(tag, message)`` into an inbox several channels share."""

    __slots__ = ("inbox", "tag")

    def __init__(self, tag: str, inbox: Inbox[tuple[str, bytes]]) -> None:
        self.tag, self.inbox = tag, inbox

    def put(self, item: bytes, /) -> None:
        self.inbox.put((self.tag, item))


class Fanout(Subscriber):
    """A channel's one subscriber in this process: hands each message to every receiver of
    the channel as it arrives, instead of queueing it for a task of its own.

    The channels plugin must be made with ``subscriber_class=Fanout``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receivers: set[Receiver] = set()

    def put_nowait(self, item: bytes | None) -> bool:
        if item is None:  # the plugin's "stop": nothing runs in the background to stop
            return True
        for receiver in tuple(self.receivers):  # a stream may leave while this loops
            receiver.put(item)
        return True


class Hub:
    """An API process's Redis subscriptions: one per channel, shared by its streams."""

    def __init__(self, channels: ChannelsPlugin) -> None:
        self.channels = channels
        self.subscribers: dict[str, Fanout] = {}
        # one at a time: concurrent first subscribes each open a pub/sub connection in
        # redis-py, and only the last one is ever read
        self._lock = asyncio.Lock()
        self._unsubscribing: set[asyncio.Task[None]] = set()

    async def join(self, channel: str, receiver: Receiver) -> None:
        """Sends ``channel``'s messages to ``receiver`` from now on (until :meth:`leave`)."""
        subscriber = self.subscribers.get(channel)
        if subscriber is None:
            async with self._lock:
                subscriber = self.subscribers.get(channel)
                if subscriber is None:
                    subscriber = await self._subscribe(channel)
                    self.subscribers[channel] = subscriber
        subscriber.receivers.add(receiver)

    async def _subscribe(self, channel: str) -> Fanout:
        try:  # a hung Redis must not hold every new stream behind the lock
            subscriber = await asyncio.wait_for(
                self.channels.subscribe([channel]), SUBSCRIBE_TIMEOUT_S
            )
        except TimeoutError:
            raise ProblemError(503, "live updates are unavailable; try again shortly") from None
        if not isinstance(subscriber, Fanout):
            await self.channels.unsubscribe(subscriber, [channel])
            raise TypeError("the channels plugin must be made with subscriber_class=Fanout")
        return subscriber

    def leave(self, channel: str, receiver: Receiver) -> None:
        """Stops sending ``channel``'s messages to ``receiver`` at once; the last one to leave
        ends the process's subscription, in a task of the hub's own: a stream leaves as its
        client goes away, in a task being cancelled, which would cancel the UNSUBSCRIBE too
        (and leave the channel subscribed for good)."""
        subscriber = self.subscribers.get(channel)
        if subscriber is None:
            return
        subscriber.receivers.discard(receiver)
        if not subscriber.receivers:
            task = asyncio.get_running_loop().create_task(self._unsubscribe(channel, subscriber))
            self._unsubscribing.add(task)
            task.add_done_callback(self._unsubscribing.discard)

    async def _unsubscribe(self, channel: str, subscriber: Fanout) -> None:
        # under the lock: an UNSUBSCRIBE must not follow a new stream's SUBSCRIBE
        async with self._lock:
            if subscriber.receivers or self.subscribers.get(channel) is not subscriber:
                return  # a stream joined meanwhile, or another leave got here first
            del self.subscribers[channel]
            try:
                await self.channels.unsubscribe(subscriber, [channel])
            except (OSError, RedisError) as error:  # Redis drops it when it reconnects
                log.warning("feed.unsubscribe_failed", channel=channel, error=str(error))


class Subscription:
    """A stream's place on one channel of the :class:`Hub`."""

    __slots__ = ("channel", "hub", "receiver")

    def __init__(self, hub: Hub, channel: str, receiver: Receiver) -> None:
        self.hub, self.channel, self.receiver = hub, channel, receiver

    async def open(self) -> Subscription:
        await self.hub.join(self.channel, self.receiver)
        return self

    async def close(self) -> None:
        self.hub.leave(self.channel, self.receiver)


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
        self.last: LiveMessage | None = None
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

    def take_arrived(self, arrived: list[bytes]) -> list[Out]:
        """The messages to send of those that came live, up to a generation's last word."""
        outs = []
        for raw in arrived:
            if (out := self.take(decode(raw))) is not None:
                outs.append(out)
                if self.finished:
                    break
        return outs

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
        self.last = message
        self.finished = _last_word(message, datetime.now(UTC))

    def waited_enough(self) -> bool:
        """Whether a completion's wait for its derivatives is over (checked between messages)."""
        if self.last is not None and not self.finished:
            self.finished = _last_word(self.last, datetime.now(UTC))
        return self.finished

    def estimating(self, streaming_models: frozenset[str]) -> bool:
        """Whether to estimate: running on a model that reports no progress of its own."""
        return (
            self.running_since is not None
            and not self.real_progress
            and self.model not in streaming_models
        )


class LiveFeeds:
    """An API process's live feeds: opens the streams, and bounds their reads of the store."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        channels: ChannelsPlugin,
        timings: Timings,
        *,
        namespace: str,
        heartbeat_s: float,
        streaming_models: frozenset[str],
        concurrent_reads: int,
    ) -> None:
        self.pool, self.channels, self.timings = pool, channels, timings
        self.namespace = namespace
        self.heartbeat_s = heartbeat_s
        self.streaming_models = streaming_models
        self.reads = asyncio.Semaphore(concurrent_reads)
        self.hub = Hub(channels)

    # -- the stored feed -------------------------------------------------------------------

    async def generation_feed(self, generation_id: UUID, after: int = 0) -> list[LiveMessage]:
        async with self.reads:
            return await GENERATIONS.of_subject(self.pool, generation_id, after, CATCH_UP_LIMIT)

    async def user_feed(
        self, user_id: UUID, after: int, feed: StoredFeed = GENERATIONS
    ) -> list[LiveMessage]:
        """The user's stored messages of ``feed`` (the generations', or the runs')."""
        since = datetime.now(UTC) - RESUME_WINDOW
        async with self.reads:
            return await feed.of_user(self.pool, user_id, after, since, CATCH_UP_LIMIT)

    async def user_head(self, user_id: UUID, feed: StoredFeed = GENERATIONS) -> int:
        since = datetime.now(UTC) - RESUME_WINDOW
        async with self.reads:
            return await feed.user_head(self.pool, user_id, since)

    # -- opening a stream ------------------------------------------------------------------

    async def open_generation(
        self, user_id: UUID, generation_id: UUID, last: int | None
    ) -> tuple[AsyncGenerator[Out, None], bool]:
        """(the stream, whether the client already has everything it will ever get)."""
        if generation_id.version != 7:
            raise ProblemError(404, f"no generation {generation_id}")
        inbox: Inbox[bytes] = Inbox()
        channel = generation_channel(self.namespace, generation_id)
        subscription = await Subscription(self.hub, channel, inbox).open()
        try:
            stored = await self._owned(user_id, generation_id)
            ended = _ended(stored)
            done = last is not None and ended is not None and (ended.position or 0) <= last
            if done:  # nothing will ever come: no stream (a never-started generator's finally
                await subscription.close()  # would not run, so do not rely on closing one)
        except BaseException:
            await subscription.close()
            raise
        stream = self.generation_stream(generation_id, last, stored, inbox)
        return _closing(stream, subscription), done

    async def _owned(self, user_id: UUID, generation_id: UUID) -> list[LiveMessage]:
        """The generation's stored messages, once the read side shows it is the user's.

        A generation just made may not be projected yet: when neither the feed nor the
        generations table has it, this waits (briefly) for the projection to reach the log's
        head, and reads again. Another user's generation, or none: 404.
        """
        stored = await self.generation_feed(generation_id)
        if not stored:
            if await generation_queries.generation(self.pool, user_id, generation_id):
                return stored
            await position_queries.wait_for_head(self.pool, GenerationsView)
            stored = await self.generation_feed(generation_id)
        if stored:
            if stored[0].user_id != user_id:
                raise ProblemError(404, f"no generation {generation_id}")
        elif await generation_queries.generation(self.pool, user_id, generation_id) is None:
            raise ProblemError(404, f"no generation {generation_id}")
        return stored

    async def open_user(
        self, user_id: UUID, last: UserPosition | None
    ) -> AsyncGenerator[Out, None]:
        inbox: Inbox[bytes] = Inbox()
        channel = user_channel(self.namespace, user_id)
        subscription = await Subscription(self.hub, channel, inbox).open()
        return self.user_stream(user_id, last, inbox, subscription)

    # -- the streams -----------------------------------------------------------------------

    async def generation_stream(
        self,
        generation_id: UUID,
        last: int | None,
        stored: list[LiveMessage],
        inbox: Inbox[bytes],
    ) -> AsyncGenerator[Out, None]:
        """The events of one generation: missed ones from the store, then live, then it closes."""
        ended = _ended(stored)
        if last is None and ended is not None:
            yield _render(ended)  # a finished generation: its final event, and done
            return
        seen = _Seen(last or 0)
        for message in stored:
            seen.note(message)  # what ran when, even from events the client already has
        seen.finished = False
        for out in seen.caught_up(stored):
            yield out
        streaming = self.streaming_models
        beat = Beat(self.heartbeat_s)
        last_estimate = time.monotonic()
        while not seen.finished:
            wait = beat.wait()
            if seen.estimating(streaming):
                wait = min(wait, ESTIMATE_EVERY_S - (time.monotonic() - last_estimate))
            arrived = await inbox.take(within=wait)
            if not arrived:
                heartbeat, catch_up = beat.due()
                if heartbeat:
                    yield HEARTBEAT
                if catch_up:  # whatever Redis did not bring
                    rows = await self.generation_feed(generation_id, seen.read_to)
                    for out in seen.caught_up(rows, complete=len(rows) < CATCH_UP_LIMIT):
                        yield out
                now = time.monotonic()
                if seen.estimating(streaming) and now - last_estimate >= ESTIMATE_EVERY_S:
                    last_estimate = now
                    yield await _estimate(self.timings, seen, generation_id)
                if seen.waited_enough():
                    return
                continue
            for live in seen.take_arrived(arrived):
                yield live

    async def user_stream(
        self,
        user_id: UUID,
        last: UserPosition | None,
        inbox: Inbox[bytes],
        subscription: Subscription,
    ) -> AsyncGenerator[Out, None]:
        """Every change to the user's generations and workflow runs: missed ones (with a
        Last-Event-ID), then live. Ids are :class:`UserPosition` s. Ends ``subscription``
        when it ends or the client goes away."""
        try:
            async for out in self._user_stream(user_id, last, inbox):
                yield out
        finally:
            await subscription.close()

    async def _user_stream(
        self, user_id: UUID, last: UserPosition | None, inbox: Inbox[bytes]
    ) -> AsyncGenerator[Out, None]:
        if last is None:
            last = UserPosition(
                await self.user_head(user_id), await self.user_head(user_id, RUNS), resumed=False
            )
        generations, runs = _Seen(last.generations), _Seen(last.runs)

        def out(taken: Out, *, run: bool = False) -> Out:
            """``taken`` (of one log) with the id of both logs where it stands."""
            at = int(taken.id)
            both = (
                UserPosition(generations.position, at) if run else UserPosition(at, runs.position)
            )
            return Out(taken.type, str(both), taken.data)

        async def catch_up() -> AsyncGenerator[Out, None]:
            rows = await self.user_feed(user_id, generations.read_to)
            for taken in generations.caught_up(rows, complete=len(rows) < CATCH_UP_LIMIT):
                yield out(taken)
            run_rows = await self.user_feed(user_id, runs.read_to, RUNS)
            for taken in runs.caught_up(run_rows, complete=len(run_rows) < CATCH_UP_LIMIT):
                yield out(taken, run=True)

        if last.resumed:
            async for missed in catch_up():
                yield missed
        beat = Beat(self.heartbeat_s)
        while True:
            arrived = await inbox.take(within=beat.wait())
            if not arrived:
                heartbeat, catch_up_now = beat.due()
                if heartbeat:
                    yield HEARTBEAT
                if catch_up_now:
                    async for missed in catch_up():
                        yield missed
                continue
            for raw in arrived:
                message = decode(raw)
                run = message.run_id is not None
                if (live := (runs if run else generations).take(message)) is not None:
                    yield out(live, run=run)


@dataclass(frozen=True, slots=True)
class UserPosition:
    """Where a user feed stands: ``"<g>.<w>"``, its positions in the generations log and in
    the workflows log. ``"<g>"`` alone is ``"<g>.0"`` (what a feed sent before its user had a
    run message, and every id a generation-only client ever saw), so those ids still resume."""

    generations: int
    runs: int
    resumed: bool = True

    def __str__(self) -> str:
        return f"{self.generations}.{self.runs}" if self.runs else str(self.generations)

    @classmethod
    def parse(cls, value: str) -> UserPosition:
        head, _, tail = value.partition(".")
        parts = (head, tail or "0")
        if not all(p.isascii() and p.isdecimal() for p in parts):
            raise ValueError(value)
        return cls(int(parts[0]), int(parts[1]))


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


async def _closing(
    stream: AsyncGenerator[Out, None], subscription: Subscription
) -> AsyncGenerator[Out, None]:
    """``stream``, unsubscribing when it ends or the client goes away."""
    try:
        async for out in stream:
            yield out
    finally:
        await subscription.close()
