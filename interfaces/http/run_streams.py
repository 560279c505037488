"""A workflow run's live stream: its stored changes, then live ones, and its provider nodes'
progress.

As a generation's stream (:mod:`interfaces.http.streams`): subscribe to the run's channel
first, read what the client missed from the workflows projection's ``feed`` table, then forward
live messages, dropping any whose position was sent; event ids are positions in the workflows
log, so ``Last-Event-ID`` resumes without a gap or a duplicate. Every message's ``progress``
only moves forward within a stream.

While a provider node runs, the stream also follows its generation's channel and forwards the
generation's ``progress`` as ``node_progress`` (``node``, ``generation_id``, ``percent`` and the
run's ``progress`` counting it). That progress is not stored: it carries the id of the last
stored change.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any
from uuid import UUID

from application.live import LiveMessage, decode, generation_channel, run_channel
from domain.workflow import NODE_TERMINAL, PROVIDER_OPS
from interfaces.http.problems import ProblemError
from interfaces.http.streams import (
    CATCH_UP_LIMIT,
    HEARTBEAT,
    Beat,
    Inbox,
    LiveFeeds,
    Out,
    Subscription,
    Tagged,
    _Seen,
)
from projections import position_queries, workflow_queries
from projections.workflow_queries import RUNS
from projections.workflows import FINAL_TYPES, NODE_PROGRESS_TYPE, WorkflowsView

_RUN = "run"  # the tag of the run channel's messages in the stream's queue


async def open_run(
    feeds: LiveFeeds, user_id: UUID, run_id: UUID, last: int | None
) -> tuple[AsyncGenerator[Out, None], bool]:
    """(the stream, whether the client already has everything it will ever get)."""
    if run_id.version != 7:
        raise ProblemError(404, f"no workflow run {run_id}")
    stream = RunStream(feeds, run_id)
    await stream.subscribe(_RUN, run_channel(feeds.namespace, run_id))
    try:
        stored = await _owned(feeds, user_id, run_id)
        done = (
            last is not None
            and bool(stored)
            and stored[-1].type in FINAL_TYPES
            and (stored[-1].position or 0) <= last
        )
        if done:
            await stream.close()
    except BaseException:
        await stream.close()
        raise
    return stream.run(last, stored), done


async def _owned(feeds: LiveFeeds, user_id: UUID, run_id: UUID) -> list[LiveMessage]:
    """The run's stored messages, once the read side shows it is the user's (waiting
    briefly for the projection when it has neither yet). Another user's run, or none: 404."""
    row = await workflow_queries.run_row(feeds.pool, user_id, run_id)
    if row is None:
        await position_queries.wait_for_head(feeds.pool, WorkflowsView)
        row = await workflow_queries.run_row(feeds.pool, user_id, run_id)
    if row is None:
        raise ProblemError(404, f"no workflow run {run_id}")
    async with feeds.reads:
        return await RUNS.of_subject(feeds.pool, run_id, 0, CATCH_UP_LIMIT)


class RunStream:
    """One client's stream of one run: its subscriptions (the run's channel and its running
    provider nodes' generations') feed one queue."""

    def __init__(self, feeds: LiveFeeds, run_id: UUID) -> None:
        self.feeds, self.run_id = feeds, run_id
        self.inbox: Inbox[tuple[str, bytes]] = Inbox()
        self.subscriptions: dict[str, Subscription] = {}
        #: node -> {"status", "generation_id", "op"}: what the stream knows of each node.
        self.nodes: dict[str, dict[str, Any]] = {}
        self.live: dict[str, float] = {}  # running node -> its generation's progress (0..1)
        self.best = 0.0  # the highest progress sent

    async def subscribe(self, tag: str, channel: str) -> None:
        subscription = Subscription(self.feeds.hub, channel, Tagged(tag, self.inbox))
        self.subscriptions[tag] = await subscription.open()

    async def unsubscribe(self, tag: str) -> None:
        subscription = self.subscriptions.pop(tag, None)
        if subscription is not None:
            await subscription.close()

    async def close(self) -> None:
        for tag in list(self.subscriptions):
            await self.unsubscribe(tag)

    # -- what the stream knows of the nodes ----------------------------------------------

    def know(self, nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            self.nodes[node["id"]] = {
                "status": node["status"],
                "generation_id": node.get("generation_id"),
                "op": node["op"],
            }
            if node["status"] != "running":
                self.live.pop(node["id"], None)

    async def follow_nodes(self) -> None:
        """Follows the generations of the running provider nodes, and no others."""
        wanted = {
            str(state["generation_id"]): node
            for node, state in self.nodes.items()
            if state["status"] in ("queued", "running")
            and state["op"] in PROVIDER_OPS
            and state["generation_id"]
        }
        for tag in [t for t in self.subscriptions if t != _RUN and t not in wanted]:
            await self.unsubscribe(tag)
        for generation_id in wanted.keys() - self.subscriptions.keys():
            channel = generation_channel(self.feeds.namespace, UUID(generation_id))
            await self.subscribe(generation_id, channel)

    def progress(self, reported: float) -> float:
        """``reported``, never below what was sent before."""
        self.best = max(self.best, float(reported))
        return self.best

    def estimated(self) -> float:
        """The run's progress from its nodes: each counts equally, a running one for its
        generation's progress."""
        if not self.nodes:
            return self.best
        done = sum(
            1.0 if s["status"] in NODE_TERMINAL else self.live.get(n, 0.0)
            for n, s in self.nodes.items()
        )
        return min(99.9, round(100 * done / len(self.nodes), 1))

    # -- messages --------------------------------------------------------------------------

    def render(self, out: Out) -> Out:
        data = dict(out.data)
        self.know(list(data.get("nodes") or ()))
        if out.type in FINAL_TYPES:
            self.best = 100.0
        data["progress"] = self.progress(data.get("progress", 0.0))
        return Out(out.type, out.id, data)

    def node_progress(self, generation_id: str, message: LiveMessage, position: int) -> Out | None:
        node = next(
            (n for n, s in self.nodes.items() if str(s["generation_id"]) == generation_id), None
        )
        percent = message.data.get("percent")
        if message.type != "progress" or node is None or not isinstance(percent, int | float):
            return None
        self.live[node] = max(0.0, min(0.99, float(percent) / 100))
        return Out(
            NODE_PROGRESS_TYPE,
            position,
            {
                "run_id": str(self.run_id),
                "node": node,
                "generation_id": generation_id,
                "percent": percent,
                "progress": self.progress(self.estimated()),
            },
        )

    # -- the stream ------------------------------------------------------------------------

    async def run(self, last: int | None, stored: list[LiveMessage]) -> AsyncGenerator[Out, None]:
        try:
            async for out in self._run(last, stored):
                yield out
        finally:
            await self.close()

    async def _run(self, last: int | None, stored: list[LiveMessage]) -> AsyncGenerator[Out, None]:
        if last is None and stored and stored[-1].type in FINAL_TYPES:
            yield self.render(_plain(stored[-1]))  # an ended run: its final event, and done
            return
        for message in stored:  # the nodes as they stand, even from events the client has
            self.know(list(message.data.get("nodes") or ()))
        seen = _Seen(last or 0)
        finished = False
        for taken in seen.caught_up(stored):
            out = self.render(taken)
            finished = out.type in FINAL_TYPES
            yield out
        await self.follow_nodes()
        beat = Beat(self.feeds.heartbeat_s)
        while not finished:
            arrived = await self.inbox.take(within=beat.wait())
            if not arrived:
                heartbeat, catch_up = beat.due()
                if heartbeat:
                    yield HEARTBEAT
                if catch_up:  # whatever Redis did not bring
                    async with self.feeds.reads:
                        rows = await RUNS.of_subject(
                            self.feeds.pool, self.run_id, seen.read_to, CATCH_UP_LIMIT
                        )
                    for taken in seen.caught_up(rows, complete=len(rows) < CATCH_UP_LIMIT):
                        out = self.render(taken)
                        finished = finished or out.type in FINAL_TYPES
                        yield out
                    await self.follow_nodes()
                continue
            async for out in self._live(seen, arrived):
                finished = out.type in FINAL_TYPES
                yield out

    async def _live(
        self, seen: _Seen, arrived: list[tuple[str, bytes]]
    ) -> AsyncGenerator[Out, None]:
        """What to send of the messages that arrived: the run's changes (up to its final one)
        and its running nodes' progress."""
        for tag, raw in arrived:
            message = decode(raw)
            if tag != _RUN:
                if (node_out := self.node_progress(tag, message, seen.position)) is not None:
                    yield node_out
                continue
            if (change := seen.take(message)) is not None:
                out = self.render(change)
                yield out
                if out.type in FINAL_TYPES:
                    return
                await self.follow_nodes()


def _plain(message: LiveMessage) -> Out:
    return Out(message.type, message.position or 0, message.data)
