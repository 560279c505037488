"""The Dramatiq broker on Redis, tuned for prompt recovery, and the logging-context middleware.

A worker killed with SIGKILL leaves the messages it was processing in its acknowledgement set
until some other worker's *maintenance* (a branch of Dramatiq's ``dispatch.lua``) finds that
worker's heartbeat older than the heartbeat timeout and puts them back on their queues. The
recovery time is therefore the timeout plus the wait for the next maintenance, plus a fetch.

When a heartbeat is refreshed: every call of the dispatch script (fetch, ack, enqueue, ...)
first writes ``ZADD <ns>:__heartbeats__ <now> <broker id>``, one broker id per worker process.
A consumer stops fetching, though, once it holds its prefetch (twice its threads) unacked, so
a worker whose threads are all busy on long provider calls may go quiet on that queue; only its
other consumers' idle fetches kept it alive. Relying on that, a short timeout could declare a
live, busy worker dead and run its messages twice. So each worker process runs a
:class:`KeepAlive` thread: every :data:`KEEP_ALIVE_MS` it refreshes its heartbeat (whatever its
consumers are doing) and runs maintenance on every declared queue and delay queue. Maintenance
runs nowhere else (``maintenance_chance`` 0: not by chance on fetches, nor in the API or the
dispatcher), so after it has lost Redis the thread refreshes only, for one timeout, before it
maintains again: a Redis outage must not make every other live worker look dead the moment it
ends (they refresh within :data:`KEEP_ALIVE_MS` of reconnecting).

Numbers. Before: a 10 s timeout and maintenance on 20 % of fetches (~0.5 s later on average):
10.6 s measured. Now: a 3 s timeout (``PIXEVO_WORKER_HEARTBEAT_TIMEOUT_S``), refreshed every
0.5 s, so a live worker looks dead only after 2.5 s without running a thread that sleeps
between two Redis writes (a stalled process, a Redis or network outage: what any timeout
admits); a dead one is found at most 3 s + 0.5 s after its last heartbeat and its message is
fetched within the next poll (:data:`WORKER_POLL_MS`). ``benchmarks/worker_recovery.py``
measures kill -> resumed. Heartbeats carry each process's wall clock: hosts' clocks must agree
well within the 2.5 s, and every worker must use the same timeout (the shortest one rules).
Should a live worker be taken for dead anyway, a generation is still not submitted twice: the
job id is recorded before anyone waits on it, and a redelivered message waits on that job.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import dramatiq
import redis.asyncio as aioredis
import structlog
from dramatiq.broker import Consumer, MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.message import Message
from dramatiq.middleware import Middleware

from application.reactions import QUEUES
from infrastructure.tracing import TracePropagation

#: Without a heartbeat for this long a worker is taken for dead (the platform's default; the
#: setting ``PIXEVO_WORKER_HEARTBEAT_TIMEOUT_S`` changes it, at least 4 keep-alives long).
HEARTBEAT_TIMEOUT_MS = 3_000
#: How often a worker process refreshes its heartbeat and maintains the queues.
KEEP_ALIVE_MS = 500
#: How long an idle consumer waits on its queue's doorbell before it fetches again anyway (a
#: delayed message's due time, a requeued one, a doorbell rung while it was fetching).
WORKER_POLL_MS = 100
#: Doorbell rings kept while nobody waits: enough to wake every idle consumer of a queue.
DOORBELL_RINGS = 16
#: Dispatch-script commands the script has no branch for: it refreshes the caller's heartbeat
#: (the first thing it does for any command) and, for ``MAINTAIN``, runs maintenance.
HEARTBEAT, MAINTAIN = "heartbeat", "maintain"
log = structlog.get_logger(__name__)


#: Ids bound where a message is sent that travel with it, to be bound where it is processed.
PROPAGATED = ("generation_id", "workflow_run_id", "request_id")


class LogContext(Middleware):
    """Binds the message's ids to structlog's context for the message's lifetime, and carries
    the sender's bound ids (:data:`PROPAGATED`) in the message, so a generation's id is on
    every line from the request through the dispatcher and the actor to the provider call."""

    def before_enqueue(self, _broker: dramatiq.Broker, message: Any, _delay: int) -> None:
        bound = structlog.contextvars.get_contextvars()
        carried = {k: str(bound[k]) for k in PROPAGATED if bound.get(k) is not None}
        if carried:
            message.options["log_context"] = carried

    def before_process_message(self, _broker: dramatiq.Broker, message: MessageProxy) -> None:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id,
            actor=message.actor_name,
            **{
                k: v
                for k, v in message.kwargs.items()
                if k.endswith("_id") or k in ("reaction", "upstream")
            },
            **dict(message.options.get("log_context") or {}),
        )

    def after_process_message(self, *_: Any, **__: Any) -> None:
        structlog.contextvars.clear_contextvars()

    after_skip_message = after_process_message


def broker_namespace(namespace: str) -> str:
    """The prefix of the broker's Redis keys for the platform's ``namespace``: Dramatiq keeps a
    queue's message ids in the list ``<prefix>:<queue>`` and its messages in the hash
    ``<prefix>:<queue>.msgs``."""
    return f"{namespace}-dramatiq"


async def queue_depths(client: aioredis.Redis, namespace: str) -> dict[str, int]:
    """Messages not yet acknowledged in each of the platform's queues (waiting, delayed by a
    retry's backoff, or being processed), from the broker's keys in Redis."""
    prefix = broker_namespace(namespace)
    depths = dict.fromkeys(QUEUES, 0)
    async for key in client.scan_iter(match=f"{prefix}:*.msgs", count=100):
        name = (key.decode() if isinstance(key, bytes) else str(key))[len(prefix) + 1 : -5]
        queue = name.removesuffix(".DQ")
        depths[queue] = depths.get(queue, 0) + int(await client.hlen(key))
    return depths


class RecoveringRedisBroker(RedisBroker):
    """Dramatiq's Redis broker with maintenance on demand (:meth:`maintain`) instead of by
    chance on its commands."""

    def __init__(self, url: str, namespace: str, heartbeat_timeout_ms: int) -> None:
        super().__init__(  # type: ignore[no-untyped-call]  # Dramatiq: untyped
            url=url,
            namespace=namespace,
            heartbeat_timeout=heartbeat_timeout_ms,
            maintenance_chance=0,  # only on demand: see _should_do_maintenance
        )

    def _should_do_maintenance(self, command: str) -> int:
        return int(command == MAINTAIN)

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000) -> Consumer:
        return DoorbellConsumer(self, queue_name, prefetch, timeout)

    def enqueue(self, message: Message[Any], *, delay: int | None = None) -> Message[Any]:
        """Enqueues, then rings the queue's doorbell (a delayed message waits for its time)."""
        enqueued: Message[Any] = super().enqueue(message, delay=delay)
        if delay is None:
            bell = doorbell(self.namespace, message.queue_name)
            with self.client.pipeline(transaction=False) as ring:
                ring.rpush(bell, 1)
                ring.ltrim(bell, -DOORBELL_RINGS, -1)
                ring.pexpire(bell, 60_000)
                ring.execute()
        return enqueued

    def queues_to_maintain(self) -> list[str]:
        return sorted(self.get_declared_queues() | self.get_declared_delay_queues())

    def heartbeat(self) -> None:
        """Refreshes this process's heartbeat."""
        getattr(self, f"do_{HEARTBEAT}")(QUEUES[0])  # the queue is not used

    def maintain(self) -> None:
        """Refreshes this process's heartbeat and, on every declared queue, puts the messages
        of workers whose heartbeat is older than the timeout back on it."""
        for queue in self.queues_to_maintain():
            getattr(self, f"do_{MAINTAIN}")(queue)


def doorbell(namespace: str, queue_name: str) -> str:
    """The Redis list an enqueue on ``queue_name`` pushes to and an idle consumer blocks on."""
    return f"{namespace}:{queue_name}.bell"


class DoorbellConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer, idle on its queue's doorbell instead of asleep.

    Dramatiq's consumer sleeps between empty fetches, backing off to the worker timeout: with
    100 ms a message waited 50-100 ms for an idle worker, at every hop of a generation (three
    before it is visible). Here it fetches at once (no back-off) and, finding nothing, blocks
    on ``BLPOP`` of the doorbell for at most :data:`WORKER_POLL_MS`: an enqueue rings it, so the
    message is fetched within a round trip. A consumer that holds its prefetch does not take a
    ring meant for an idle one (it sleeps instead)."""

    def __init__(self, broker: RedisBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        # no back-off sleep: the bell waits  (Dramatiq: untyped)
        super().__init__(broker, queue_name, prefetch, 0)  # type: ignore[no-untyped-call]
        self.wait_s = timeout / 1000
        self.bell = doorbell(broker.namespace, queue_name)

    def __next__(self) -> MessageProxy | None:
        message: MessageProxy | None = super().__next__()  # type: ignore[no-untyped-call]
        if message is None:
            if self.outstanding_message_count < self.prefetch:
                self.broker.client.blpop([self.bell], timeout=self.wait_s)
            else:
                time.sleep(self.wait_s)
        return message


class Maintained(Protocol):
    def heartbeat(self) -> None: ...
    def maintain(self) -> None: ...


class KeepAlive(Middleware):
    """In a worker process, a thread that keeps its heartbeat fresh and maintains the queues
    every ``interval_s``; after a failure it only refreshes, for ``quiet_s``, before it
    maintains again (see the module's docstring)."""

    def __init__(self, interval_s: float, quiet_s: float) -> None:
        self.interval_s, self.quiet_s = interval_s, quiet_s
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        #: Since when Redis has answered without a failure (``None``: it has just failed).
        self.contact_since: float | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, _worker: Any) -> None:
        if isinstance(broker, RecoveringRedisBroker):
            self.start(broker)

    def before_worker_shutdown(self, _broker: dramatiq.Broker, _worker: Any) -> None:
        self.stop()

    def start(self, broker: Maintained) -> None:
        self.stopping.clear()
        self.contact_since = time.monotonic()  # a new process, too, waits one quiet period
        self.thread = threading.Thread(
            target=self.run, args=(broker,), name="pixevo-keep-alive", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=self.interval_s * 4)

    def run(self, broker: Maintained) -> None:
        while not self.stopping.wait(self.interval_s):
            self.tick(broker, time.monotonic())

    def tick(self, broker: Maintained, now: float) -> None:
        """One round: maintain if Redis has answered for ``quiet_s``, else only refresh."""
        try:
            if self.contact_since is not None and now - self.contact_since >= self.quiet_s:
                broker.maintain()
            else:
                broker.heartbeat()
        except Exception as error:  # noqa: BLE001 - the thread must outlive any failure
            self.contact_since = None
            log.warning("broker.keep_alive_failed", error=repr(error))
            return
        if self.contact_since is None:
            self.contact_since = now


def make_broker(
    redis_url: str, namespace: str, heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS
) -> RecoveringRedisBroker:
    broker = RecoveringRedisBroker(redis_url, broker_namespace(namespace), heartbeat_timeout_ms)
    broker.add_middleware(KeepAlive(KEEP_ALIVE_MS / 1000, heartbeat_timeout_ms / 1000))
    broker.add_middleware(LogContext())
    broker.add_middleware(TracePropagation())
    return broker
