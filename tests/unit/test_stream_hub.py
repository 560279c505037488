"""The hub: one subscription per channel in a process, whatever the number of streams on it."""

from __future__ import annotations

import asyncio
import contextlib

from litestar.channels import ChannelsPlugin
from litestar.channels.backends.memory import MemoryChannelsBackend

from interfaces.http.streams import Fanout, Hub, Inbox, Subscription


def plugin() -> ChannelsPlugin:
    return ChannelsPlugin(
        backend=MemoryChannelsBackend(),
        arbitrary_channels_allowed=True,
        subscriber_class=Fanout,
    )


def test_streams_on_a_channel_share_one_subscription_and_each_gets_every_message() -> None:
    async def run() -> None:
        async with plugin() as channels:
            hub = Hub(channels)
            first, second = Inbox[bytes](), Inbox[bytes]()
            one = await Subscription(hub, "user:1", first).open()
            two = await Subscription(hub, "user:1", second).open()
            assert len(hub.subscribers) == 1
            waiting = asyncio.ensure_future(first.take(within=5))
            await channels.wait_published(b"a", ["user:1"])
            await channels.wait_published(b"b", ["user:1"])
            assert await waiting in ([b"a"], [b"a", b"b"])
            await asyncio.sleep(0)
            assert (await second.take(within=5))[-1] == b"b"
            await one.close()
            await channels.wait_published(b"c", ["user:1"])
            assert await second.take(within=5) == [b"c"]
            assert first.items == []  # left: nothing more comes to it
            await two.close()
            await asyncio.sleep(0.05)
            assert hub.subscribers == {}

    asyncio.run(run())


def test_a_stream_cancelled_as_it_leaves_still_ends_the_subscription() -> None:
    async def run() -> None:
        async with plugin() as channels:
            hub = Hub(channels)
            inbox = Inbox[bytes]()

            async def stream() -> None:
                subscription = await Subscription(hub, "gen:1", inbox).open()
                try:
                    await inbox.take(within=60)
                finally:
                    await subscription.close()

            task = asyncio.ensure_future(stream())
            await asyncio.sleep(0.05)
            task.cancel()  # the client went away
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            assert hub.subscribers == {}
            assert not any(channels._channels.values())

    asyncio.run(run())


def test_an_inbox_waits_at_most_its_time_and_keeps_only_the_newest_backlog() -> None:
    async def run() -> None:
        inbox = Inbox[int]()
        assert await inbox.take(within=0.01) == []
        for i in range(1500):
            inbox.put(i)
        taken = await inbox.take(within=1)
        assert taken[0] == 500
        assert taken[-1] == 1499

    asyncio.run(run())
