"""Concurrent SSE subscribers one API process holds, its memory per connection and fan-out time.

What it measures
    One ``pixevo api`` process (uvicorn, one worker, ``PIXEVO_LOG_LEVEL=WARNING``) on a scratch
    database holding ``--users`` users (default 200). A client in this process (one uvloop event
    loop, raw asyncio streams) opens ``GET /v1/events`` streams with the users' bearer keys,
    round-robin over the users (10,000 streams = 50 per user), in cumulative ``--steps`` (default
    1,000, 2,500, 5,000, 7,500, 10,000), at most ``--open-concurrency`` connects in flight. A stream
    counts once its ``: stream open`` comment arrived; all are read until the end, and one that
    ends early counts as dropped.

    Before the steps, 100 streams are opened and closed (the first one alone), so that one-time
    costs are not charged to connections; then the 0 point is taken. After each step and
    ``--settle`` seconds: the API's RSS and open fds (psutil, children included), the streams
    alive, ``GET /health`` latency (``--health-samples`` requests on a connection of their own, 5 s
    timeout each)
    and ``--rounds`` fan-out rounds: one ``status`` message per user published through
    ``RedisLivePublisher`` as the projection publishes them (positions above anything stored),
    timed from publish to each stream's delivery; every stream must get it within 10 s. The run
    stops at the first step where a connect fails, a stream drops, a message is not delivered or
    ``/health`` does not answer within 5 s (after 50 failed connects a step opens no more, and a
    failed step has no fan-out rounds). Memory per connection: the least-squares slope of RSS
    over the steps held, and (RSS(N) - RSS(0)) / N per step.

    Then a hold until every stream has had a heartbeat since the hold began (one every 15 s per
    stream; every fourth, jittered, is followed by a catch-up read of the feed table), ``/health``
    sampled every 0.05 s meanwhile. Last, the client closes every stream and times until the API
    has unsubscribed from every Redis channel.
    The API log is kept as ``benchmarks/results/sse_subscribers.api.log`` and its errors counted.

Command
    .venv/bin/python -m benchmarks.sse_subscribers [--steps 1000,2500,5000,7500,10000]
        [--users 200] [--rounds 3] [--open-concurrency 50] [--settle 2] [--target 10000]
        [--health-samples 200]
    The benchmark raises its soft limit on open files (and so the API's) up to the hard one
    (``ulimit -Hn``); it needs about the last step plus 1,000.

Target (issue 14, item 5)
    One API process holds 10,000 streams; ``/health`` p99 <= 10 ms (at the last step, over
    ``--health-samples`` requests, and through the heartbeat hold); <= 30 MiB of RSS per 1,000
    streams (the slope over the steps, and over the 0 point at the last step); the fan-out of a
    message to every stream reported (p50/p99 of its deliveries, medians of the rounds).

Output: a table per step (fan-out columns are medians of the rounds) and
``benchmarks/results/sse_subscribers.json``. The client, the API, Redis and PostgreSQL share this
machine's cores; the cpu columns show the cores the client and the API used while opening.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from application.live import LiveMessage
from benchmarks._support import (
    RESULTS_DIR,
    ApiProcess,
    HttpConnection,
    argument_parser,
    bench_environment,
    catch_up,
    cpu_seconds,
    free_port,
    median,
    percentile,
    run_async,
    table,
    write_result,
)
from domain.ids import uuid7
from infrastructure.live import RedisLivePublisher
from interfaces.bootstrap import build

NAME = "sse_subscribers"
OPEN_TIMEOUT_S = HEALTH_TIMEOUT_S = 5.0
DELIVERY_TIMEOUT_S = 10.0
HEARTBEAT_WAIT_S = 35.0  # the server's 15 s heartbeat, with room for a slow round
WARMUP_STREAMS = 100
FIRST_POSITION = 10**12  # above any stored feed position: streams never drop these as seen
EVENT_ID = re.compile(rb"^id: (\d+)", re.MULTILINE)
#: An exception's last line, also inside the boxes of rich tracebacks (not their locals).
EXCEPTION_LINE = re.compile(r"^(?:│ )?([A-Z][A-Za-z]+): (\S.*?)[ │]*$")
MIB = 1024 * 1024
NAN = float("nan")
TARGET_HEALTH_P99_MS = 10.0
TARGET_MIB_PER_1000 = 30.0
#: Sockets besides the streams' (the API's pool, Redis, the health connection, files).
SPARE_FDS = 1000


class Stream:
    """One ``GET /v1/events`` connection, read by a task until it ends."""

    def __init__(self, user: int) -> None:
        self.user = user
        self.heartbeats = 0
        self.arrivals: dict[int, float] = {}  # event id -> perf_counter when it arrived
        self.ended: str | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self, port: int, api_key: str) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(
            f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {api_key}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200" or b"transfer-encoding: chunked" not in head.lower():
            raise ConnectionError(f"answered {head[:12].decode(errors='replace')}")
        if b": stream open" not in await read_chunk(reader):
            raise ConnectionError("the first message was not ': stream open'")
        self.task = asyncio.create_task(self.listen(reader))

    async def listen(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await read_chunk(reader):
                now = time.perf_counter()
                self.heartbeats += chunk.startswith(b": heartbeat")
                for found in EVENT_ID.findall(chunk):
                    self.arrivals[int(found)] = now
            self.ended = "the server ended the stream"
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            self.ended = repr(error)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body; b"" at its end."""
    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
    return (await reader.readexactly(size + 2))[:-2]


async def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    """Polls ``condition`` every 50 ms for up to ``seconds``; whether it became true."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def summary(samples: Sequence[float | None], prefix: str) -> dict[str, Any]:
    """p50/p99/max of the answered samples (ms) and how many failed."""
    ok = sorted(s for s in samples if s is not None)
    return {
        f"{prefix}_p50_ms": percentile(ok, 0.5),
        f"{prefix}_p99_ms": percentile(ok, 0.99),
        f"{prefix}_max_ms": ok[-1] if ok else NAN,
        f"{prefix}_failed": len(samples) - len(ok),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, api: ApiProcess, users: list[Any], env: Any):
        self.args, self.api, self.users = args, api, users
        self.streams: list[Stream] = []
        self.health = HttpConnection("127.0.0.1", api.port)
        self.redis = redis.Redis.from_url(env.redis_url)
        self.publisher = RedisLivePublisher(env.redis_url, env.settings.redis_namespace)
        self.channels = f"{env.settings.redis_namespace}:live:*"
        self.published = 0
        self.rss0 = NAN  # the API's RSS with no stream open, after the warm-up

    def alive(self) -> list[Stream]:
        return [s for s in self.streams if s.ended is None]

    def server(self) -> tuple[float, int, float]:
        """(API RSS in MiB, its open fds, its cpu seconds), children included."""
        processes = self.api.processes()
        rss = sum(p.memory_info().rss for p in processes)
        return rss / MIB, sum(p.num_fds() for p in processes), cpu_seconds(processes)

    async def open_many(self, count: int) -> dict[str, Any]:
        """Opens ``count`` more streams: rate, connect latency, failures, cpu."""
        gate = asyncio.Semaphore(self.args.open_concurrency)
        latencies: list[float] = []
        failures: dict[str, int] = {}

        async def one(index: int) -> None:
            stream = Stream(index % len(self.users))
            async with gate:
                if sum(failures.values()) >= self.args.open_concurrency:
                    return  # the step has failed: no need to wait out every timeout
                started = time.perf_counter()
                try:
                    key = self.users[stream.user].api_key
                    await asyncio.wait_for(stream.open(self.api.port, key), OPEN_TIMEOUT_S)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
                    reason = str(error) or type(error).__name__
                    failures[reason] = failures.get(reason, 0) + 1
                    await stream.close()
                    return
                latencies.append(time.perf_counter() - started)
                self.streams.append(stream)

        client0, api0, t0 = time.process_time(), self.server()[2], time.perf_counter()
        await asyncio.gather(*(one(len(self.streams) + i) for i in range(count)))
        elapsed = time.perf_counter() - t0
        latencies.sort()
        return {
            "opened": len(latencies),
            "failures": failures,
            "open_s": elapsed,
            "opened_per_s": len(latencies) / elapsed,
            "connect_p99_ms": percentile(latencies, 0.99) * 1000,
            "client_cpu": (time.process_time() - client0) / elapsed,
            "api_cpu": (self.server()[2] - api0) / elapsed,
        }

    async def health_ms(self) -> float | None:
        """One GET /health; None when it failed or took over 5 s."""
        started = time.perf_counter()
        try:
            request = self.health.request("GET", "/health")
            status, _ = await asyncio.wait_for(request, HEALTH_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            await self.health.close()
            return None
        return (time.perf_counter() - started) * 1000 if status == 200 else None

    async def fan_out(self) -> dict[str, Any]:
        """One ``status`` message per user; from publish to each stream's delivery."""
        base, self.published = self.published, self.published + len(self.users)
        base += FIRST_POSITION
        at = datetime.now(UTC).isoformat()
        messages = []
        for index, user in enumerate(self.users):
            generation_id = uuid7()
            data: dict[str, Any] = {"generation_id": str(generation_id), "status": "running"}
            data |= {"model": "sim", "provider": "sim", "notice": None, "fallback_from": None}
            data["at"] = at
            messages.append(
                LiveMessage(
                    type="status",
                    generation_id=generation_id,
                    user_id=user.user_id,
                    data=data,
                    position=base + index,
                )
            )
        streams = self.alive()
        client0, api0, published = time.process_time(), self.server()[2], time.perf_counter()
        await asyncio.to_thread(self.publisher.publish, messages)
        await wait_for(
            lambda: all(base + s.user in s.arrivals for s in streams), DELIVERY_TIMEOUT_S
        )
        elapsed = time.perf_counter() - published
        arrivals = [s.arrivals.get(base + s.user) for s in streams]
        times = sorted((a - published) * 1000 for a in arrivals if a is not None)
        return {
            "received": len(times),
            "missed": len(streams) - len(times),
            "p50_ms": percentile(times, 0.5),
            "p99_ms": percentile(times, 0.99),
            "last_ms": times[-1] if times else NAN,
            "client_cpu": (time.process_time() - client0) / elapsed,
            "api_cpu": (self.server()[2] - api0) / elapsed,
        }

    async def measure(self, target: int) -> dict[str, Any]:
        await asyncio.sleep(self.args.settle)
        rss, fds, _ = self.server()
        step = {"connections": target, "held": len(self.alive()), "rss_mib": rss, "fds": fds}
        self.rss0 = self.rss0 if target else rss
        step["kib_per_stream"] = (rss - self.rss0) * 1024 / step["held"] if target else NAN
        await self.health.close()  # uvicorn closes keep-alive connections idle for 5 s
        samples = [await self.health_ms() for _ in range(self.args.health_samples)]
        step |= summary(samples, "health")
        rounds = []
        failed = step["held"] < target or step["health_failed"]
        for _ in range(self.args.rounds if target and not failed else 0):
            rounds.append(await self.fan_out())
            await asyncio.sleep(0.5)
        step["missed"] = sum(r["missed"] for r in rounds)
        for key in ("p50_ms", "p99_ms", "last_ms", "client_cpu", "api_cpu"):
            step[f"fan_out_{key}"] = median([r[key] for r in rounds])
        return step | {"fan_out_rounds": rounds}

    async def run(self) -> dict[str, Any]:
        await self.open_many(1)
        await self.open_many(min(WARMUP_STREAMS, self.args.steps[0]) - 1)
        for stream in self.streams:
            await stream.close()
        self.streams.clear()
        steps, stopped = [await self.measure(0) | {"ok": True}], None
        for target in self.args.steps:
            opened = await self.open_many(target - len(self.streams))
            step = await self.measure(target) | opened
            steps.append(step)
            print(
                f"  {target:>6,} streams: held {step['held']:,}, RSS {step['rss_mib']:,.0f} MiB,"
                f" /health p50 {step['health_p50_ms']:.1f} p99 {step['health_p99_ms']:.1f} ms,"
                f" fan-out p99 {step['fan_out_p99_ms']:,.0f} ms"
            )
            step["ok"] = not (step["failures"] or step["missed"] or step["health_failed"])
            step["ok"] &= step["held"] == target
            if not step["ok"]:
                stopped = f"at {target:,}: connect failures {step['failures']}, held "
                stopped += f"{step['held']:,}, messages missed {step['missed']}, "
                stopped += f"/health failures {step['health_failed']}"
                break
        hold = await self.hold()
        ended: dict[str, int] = {}
        for stream in self.streams:
            if stream.ended is not None:
                ended[stream.ended] = ended.get(stream.ended, 0) + 1
            await stream.close()
        closed = time.perf_counter()
        drained = await wait_for(lambda: not self.redis.pubsub_channels(self.channels), 30.0)
        release_s = time.perf_counter() - closed if drained else NAN
        await self.health.close()
        self.redis.close()
        self.publisher.close()
        return {
            "steps": steps,
            "stopped": stopped,
            "hold": hold,
            "ended_early": ended,
            "unsubscribed_all_s_after_close": release_s,
            "rss_mib_after_close": self.server()[0],
        }

    async def hold(self) -> dict[str, Any]:
        """Waits until every stream had a heartbeat since it began (a whole heartbeat period
        of every stream), sampling /health every 0.05 s."""
        samples: list[float | None] = []

        async def sample() -> None:
            while True:
                samples.append(await self.health_ms())
                await asyncio.sleep(0.05)

        for stream in self.streams:
            stream.heartbeats = 0
        started, sampler = time.perf_counter(), asyncio.create_task(sample())
        beaten = await wait_for(lambda: all(s.heartbeats for s in self.alive()), HEARTBEAT_WAIT_S)
        await asyncio.sleep(self.args.settle)  # each heartbeat is followed by a catch-up query
        sampler.cancel()
        return {
            "seconds": time.perf_counter() - started,
            "every_stream_had_a_heartbeat": beaten,
            "streams_alive": len(self.alive()),
        } | summary(samples, "health")


def raise_fd_limit(streams: int) -> int:
    """Raises this process's soft limit on open files (the API inherits it) to fit
    ``streams`` sockets; the limit it got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = streams + SPARE_FDS
    if soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    fds = raise_fd_limit(args.steps[-1])
    if fds < args.steps[-1] + SPARE_FDS:
        print(f"{NAME}: open files limited to {fds:,} (ulimit -Hn); the last steps may fail")
    with bench_environment(NAME) as env:
        c = build(env.settings)
        try:
            users = [c.users.create(f"sse{i}@example.com") for i in range(args.users)]
            catch_up(c, "generations")  # creates the feed table the streams read
        finally:
            c.close()
        with ApiProcess(env, free_port(), workers=1) as api:
            healthy = api.wait_healthy()
            args.load_average = os.getloadavg()[0]  # others' work on these 2 cores skews it
            print(
                f"{NAME}: pixevo api on {api.base_url}, healthy after {healthy:.1f} s; load "
                f"average {args.load_average:.2f}"
            )
            outcome = run_async(Bench(args, api, users, env).run())
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        log = shutil.copyfile(api.log_path, RESULTS_DIR / f"{NAME}.api.log")
    return report(args, outcome, log)


def log_problems(path: Path) -> dict[str, int]:
    """The API log's error and warning events and exception messages, counted."""
    found: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        if (match := EXCEPTION_LINE.match(line)) is not None:
            key = f"{match[1]}: {match[2][:90]}"
        elif any(level in line for level in ("[error", "[warning", "[critical")):
            key = line.split("]", 1)[1].strip()[:90]
        else:
            continue
        found[key] = found.get(key, 0) + 1
    return found


COLUMNS = {  # heading: key of a step
    "streams": "connections",
    "held": "held",
    "opened/s": "opened_per_s",
    "connect p99 ms": "connect_p99_ms",
    "RSS MiB": "rss_mib",
    "KiB/stream": "kib_per_stream",
    "fds": "fds",
    "/health p50 ms": "health_p50_ms",
    "p99": "health_p99_ms",
    "max": "health_max_ms",
    "fan-out p50 ms": "fan_out_p50_ms",
    "fan-out p99": "fan_out_p99_ms",
    "last": "fan_out_last_ms",
    "cpu client": "client_cpu",
    "api": "api_cpu",
}


def report(args: argparse.Namespace, outcome: dict[str, Any], log: Path) -> int:
    steps, hold = outcome["steps"], outcome["hold"]
    good = [s for s in steps if s["ok"]]
    top = good[-1]
    slope = NAN
    if len(good) > 1:
        slope = statistics.linear_regression(
            [s["held"] for s in good], [s["rss_mib"] for s in good]
        ).slope
    print()
    print(table(list(COLUMNS), [[s.get(key, NAN) for key in COLUMNS.values()] for s in steps]))
    print()
    per_1000 = (top["rss_mib"] - steps[0]["rss_mib"]) * 1000 / top["held"]
    print(
        f"held {top['held']:,} streams; stopped: {outcome['stopped'] or 'no, every step held'};"
        f" memory {slope * 1000:.1f} MiB per 1,000 streams (slope of RSS over the steps), "
        f"{per_1000:.1f} MiB per 1,000 at {top['held']:,} (RSS over the 0 point)"
    )
    print(
        f"fan-out at {top['held']:,}: {args.users} messages, one per user, each reaching every"
        f" stream of its user (so one message reaches every stream), medians of {args.rounds}"
        f" rounds: p50 {top['fan_out_p50_ms']:,.0f} ms, p99 {top['fan_out_p99_ms']:,.0f} ms, last"
        f" {top['fan_out_last_ms']:,.0f} ms (cpu client {top['fan_out_client_cpu']:.2f}, "
        f"api {top['fan_out_api_cpu']:.2f})"
    )
    print(
        f"heartbeat hold {hold['seconds']:.1f} s, every stream had one: "
        f"{hold['every_stream_had_a_heartbeat']}, {hold['streams_alive']:,} streams still open "
        f"after it; /health p50 {hold['health_p50_ms']:.1f} ms, "
        f"p99 {hold['health_p99_ms']:.1f} ms, max {hold['health_max_ms']:.1f} ms, "
        f"failed {hold['health_failed']}"
    )
    print(
        f"streams that ended early: {outcome['ended_early'] or 'none'}; the API unsubscribed "
        f"from every channel {outcome['unsubscribed_all_s_after_close']:.1f} s after the client "
        f"closed them; RSS then {outcome['rss_mib_after_close']:,.0f} MiB"
    )
    held_ok = top["held"] >= args.target
    health_p99 = max(top["health_p99_ms"], hold["health_p99_ms"])
    health_ok = health_p99 <= TARGET_HEALTH_P99_MS and not hold["health_failed"]
    memory = max(slope * 1000, per_1000)
    memory_ok = held_ok and memory <= TARGET_MIB_PER_1000
    print()
    print(
        table(
            ["target", "measured", ""],
            [
                [f"{args.target:,} streams held", f"{top['held']:,}", verdict(held_ok)],
                [
                    f"/health p99 <= {TARGET_HEALTH_P99_MS:.0f} ms (at {top['held']:,} streams,"
                    " and through the heartbeats)",
                    f"{top['health_p99_ms']:.1f} ms, {hold['health_p99_ms']:.1f} ms",
                    verdict(health_ok),
                ],
                [
                    f"<= {TARGET_MIB_PER_1000:.0f} MiB per 1,000 streams",
                    f"{slope * 1000:.1f} (slope), {per_1000:.1f} (at {top['held']:,})",
                    verdict(memory_ok),
                ],
                [
                    f"fan-out to all {top['held']:,} streams (reported)",
                    f"p50 {top['fan_out_p50_ms']:,.0f} ms, p99 {top['fan_out_p99_ms']:,.0f} ms",
                    "",
                ],
            ],
        )
    )
    print()
    problems = log_problems(log)
    print(f"API log {log}: {'no errors or warnings' if not problems else ''}")
    for problem, count in sorted(problems.items(), key=lambda item: -item[1]):
        print(f"  {count:6,} x {problem}")
    headline = {"max_streams_held": top["held"], "mib_per_1000_streams": slope * 1000}
    headline |= {
        "fan_out_ms_at_max": {
            "p50": top["fan_out_p50_ms"],
            "p99": top["fan_out_p99_ms"],
            "last": top["fan_out_last_ms"],
        },
        "health_p99_ms": {"at_max": top["health_p99_ms"], "heartbeats": hold["health_p99_ms"]},
        "targets_met": {"held": held_ok, "health_p99": health_ok, "memory": memory_ok},
    }
    result = {"parameters": vars(args) | {"api_workers": 1}, **headline, **outcome}
    print(f"wrote {write_result(NAME, result | {'api_log_problems': problems})}")
    met = held_ok and health_ok and memory_ok
    return 0 if met and not outcome["ended_early"] and not problems else 1


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument(
        "--steps",
        type=lambda text: sorted({int(x) for x in text.split(",")}),
        default=[1000, 2500, 5000, 7500, 10000],
        help="cumulative stream counts, comma-separated",
    )
    parser.add_argument("--users", type=int, default=200, help="users the streams are spread over")
    parser.add_argument("--target", type=int, default=10_000, help="streams to hold")
    parser.add_argument(
        "--health-samples", type=int, default=200, help="GET /health requests per step"
    )
    parser.add_argument("--rounds", type=int, default=3, help="fan-out rounds per step")
    parser.add_argument("--open-concurrency", type=int, default=50, help="connects in flight")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before measuring")
    args = parser.parse_args(argv)
    if min(args.users, args.rounds, args.open_concurrency, args.steps[0], args.health_samples) < 1:
        parser.error(
            "--users, --rounds, --open-concurrency, --steps and --health-samples must be positive"
        )
    return args


if __name__ == "__main__":
    raise SystemExit(main())
