"""Live feed latency: an event's commit to its arrival at an SSE subscriber, p50/p99, while 100
generations a second are streamed; beside the raw Redis pub/sub latency of this machine.

What it measures
    ``pixevo api`` and ``pixevo projections run generations`` run as separate processes on a
    scratch database and Redis namespace. ``--users`` users (default 100) each hold one
    ``GET /v1/events`` stream, read by a minimal HTTP/1.1 client on asyncio streams in this
    process (uvloop when installed), all opened at once; an event arrives at ``time.time()``
    once the chunk holding it has been read.

    A driver, this module in a child process (its threads and GIL apart from the client's),
    takes generations through their lifecycle with ``GenerationsApplication.save``, no providers
    or workers: ``--rate`` new generations a second (default 100) for ``--warmup`` +
    ``--duration`` seconds, round-robin over the users, saved as the saga saves them:
    Requested; Funded+Queued; Submitted; Produced+Completed, ``--gap`` s apart (default 0.3),
    i.e. 4 saves and 6 events a generation. An event's commit time is ``time.time()`` right
    after the ``save()`` that recorded it returned (the row committed a little earlier, within
    the "save() call" time shown); it is keyed by the event's notification id, the SSE ``id``.
    Latency = arrival - commit, over the events committed in the measured window. Every event
    committed must arrive: ``missing`` counts those that did not within ``--drain`` seconds.

    Breakdown: a Redis tap here (``PSUBSCRIBE`` to the users' live channels) notes when each
    message was published, splitting the path into commit -> Redis (NOTIFY, the projection's
    batch and commit, its PUBLISH) and Redis -> subscriber (the API's subscription, the SSE
    write, this client's read). Projection batches are counted from ``pg_stat_user_tables``
    (one tracking update a batch; approximate, the statistics are flushed about once a second).

    Baseline (the floor): before each repeat's load, ``--floor-messages`` small messages (2 ms
    apart) published with redis-py from a thread, received by an asyncio redis subscriber in
    this process: publish -> receive. The same probe runs at 20 messages/s during the load
    ("under load"). ``--repeats`` repeats (default 3); the table shows medians over repeats.

Command
    .venv/bin/python -m benchmarks.live_latency [--users 100] [--rate 100] [--duration 20]
        [--warmup 5] [--gap 0.3] [--repeats 3] [--driver-threads 4]

Target
    commit -> subscriber p99 <= 100 ms at 100 generations/s, nothing missing.

Output: a table of medians and ``benchmarks/results/live_latency.json``. Driver, client, API,
projection, Redis and PostgreSQL share this machine's cores ("cores busy" says who used what).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from heapq import heappop, heappush
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
import redis.asyncio as aioredis

from application.generations import fingerprint
from application.live import decode
from application.normalise import GenerationRequest
from benchmarks._support import (
    ApiProcess,
    ChildProcess,
    Environment,
    argument_parser,
    bench_environment,
    child_env,
    cpu_seconds,
    free_port,
    launcher,
    median,
    percentile,
    postgres_cpu_delta,
    postgres_cpu_snapshot,
    run_async,
    server_version,
    table,
    write_result,
)
from domain.generation import Generation
from domain.ids import uuid7
from infrastructure.settings import Settings
from interfaces.bootstrap import build

NAME = "live_latency"
MODEL = "sim-instant"
STEPS = 4  # saves a generation
Record = tuple[int, float, float, float, int]  # position, commit, before save, due, step


# -- the driver (a child process) -------------------------------------------------------------


def drive(spec: dict[str, Any]) -> None:
    """Saves ``rate`` generations a second through their lifecycle; writes the commit times."""
    c = build(Settings.from_env(), run_migrations=False)
    app, users, rate, gap = c.generations, spec["users"], spec["rate"], spec["gap"]
    records: list[Record] = []
    errors: list[str] = []
    ready = threading.Condition()
    heap: list[tuple[float, int, int, Any]] = []
    left = [int(rate * spec["seconds"])]

    def step(due: float, n: int, number: int, generation: Any) -> None:
        try:
            if number == 0:
                asked = app.quote(
                    GenerationRequest(model=MODEL, prompt=f"live {n}", params={"seed": n})
                )
                generation = Generation.request(
                    generation_id=uuid7(), user_id=uuid.UUID(users[n % len(users)]),
                    model=asked.model, provider="replicate", prompt=asked.prompt,
                    negative_prompt=None, params=asked.params, output_format=asked.output_format,
                    quote=asked.cost_units, allow_fallback=True,
                    fingerprint=fingerprint(asked), request_hash=fingerprint(asked),
                )  # fmt: skip
            elif number == 1:
                generation.fund(uuid.uuid4())
                generation.queue()
            elif number == 2:
                generation.submitted(f"job-{n}", 1)
            else:
                generation.produced(f"live/{n}.png", 512, 512, "image/png", 40_000, 0)
                generation.complete(generation.quote)
            before = time.time()
            saved = app.save(generation)
            commit = time.time()
            records.extend((r.notification.id, commit, before, due, number) for r in saved)
        except Exception as error:  # noqa: BLE001 - reported by the parent
            errors.append(repr(error))
            number = STEPS - 1
        with ready:
            if number < STEPS - 1:
                heappush(heap, (due + gap, n, number + 1, generation))
            else:
                left[0] -= 1
            ready.notify()

    t0 = time.time() + 0.5
    print(json.dumps({"t0": t0}), flush=True)  # the parent times its window from this
    for n in range(left[0]):
        heappush(heap, (t0 + n / rate, n, 0, None))
    with ThreadPoolExecutor(spec["threads"]) as pool, ready:
        while left[0]:
            wait = heap[0][0] - time.time() if heap else 1.0
            if wait > 0:
                ready.wait(wait)
            else:
                pool.submit(step, *heappop(heap))
    Path(spec["out"]).write_text(json.dumps({"records": records, "errors": errors}))
    c.close()


# -- the subscribers, the Redis tap and the floor probe ---------------------------------------


async def sse_client(port: int, api_key: str, arrivals: dict[int, float], opened: Any) -> None:
    """One ``GET /v1/events`` stream: notes each event's arrival time by its id."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {api_key}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if head[9:12] != b"200":
        raise RuntimeError(f"GET /v1/events answered {head[:12]!r}")
    chunked, buffer = b"transfer-encoding: chunked" in head, b""
    try:
        while True:
            if chunked:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            now = time.time()
            *events, buffer = (buffer + data).split(b"\r\n\r\n")
            for line in (line for event in events for line in event.split(b"\r\n")):
                if line.startswith(b"id: "):
                    arrivals[int(line[4:])] = now
                elif line == b": stream open":
                    opened.set()
    except asyncio.IncompleteReadError:
        raise RuntimeError("the API ended a GET /v1/events stream (see its log)") from None
    finally:
        writer.close()


async def redis_tap(url: str, pattern: str, seen: dict[int, float], ready: Any) -> None:
    """Notes when each live message (by position) was published to the users' channels."""
    client = aioredis.Redis.from_url(url)
    async with client.pubsub() as pubsub:
        await pubsub.psubscribe(pattern)
        ready.set()
        async for message in pubsub.listen():
            if message["type"] == "pmessage":
                position = decode(message["data"]).position
                if position is not None:
                    seen[position] = time.time()


async def floor_probe(url: str, channel: str, count: int, interval: float) -> list[float]:
    """Redis publish -> receive seconds: a redis-py publisher thread, an asyncio subscriber."""
    client = aioredis.Redis.from_url(url)
    async with client.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation

        def publish() -> None:
            with redis.Redis.from_url(url) as publisher:
                for _ in range(count):
                    publisher.publish(channel, repr(time.time()))
                    time.sleep(interval)

        sender = asyncio.get_running_loop().run_in_executor(None, publish)
        seconds: list[float] = []
        while len(seconds) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            if message is None:
                break
            seconds.append(time.time() - float(message["data"]))
        await sender
    await client.aclose()
    return seconds


# -- one repeat -------------------------------------------------------------------------------


def stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    quantiles = {f"p{q}": percentile(ms, q / 100) for q in (50, 95, 99)}
    return {**quantiles, "max": ms[-1] if ms else float("nan"), "n": len(ms)}


def projection_batches(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables "
            "WHERE schemaname = 'proj_generations' AND relname = 'generations_tracking'"
        ).fetchone()
    return int(row[0]) if row else 0


async def load_repeat(
    args: argparse.Namespace,
    env: Environment,
    users: list[str],
    watched: dict[str, list[psutil.Process]],
    arrivals: dict[int, float],
    tapped: dict[int, float],
) -> dict[str, Any]:
    out = env.data_dir / f"driver-{uuid.uuid4().hex[:8]}.json"
    spec = {"users": users, "rate": args.rate, "seconds": args.warmup + args.duration}
    spec |= {"gap": args.gap, "threads": args.driver_threads, "out": str(out)}
    out.with_suffix(".spec").write_text(json.dumps(spec))
    driver = await asyncio.create_subprocess_exec(
        *(
            sys.executable,
            "-m",
            "benchmarks.live_latency",
            "--drive",
            str(out.with_suffix(".spec")),
        ),
        env=child_env(env.settings),
        stdout=asyncio.subprocess.PIPE,
    )
    line = await driver.stdout.readline() if driver.stdout else b""
    if not line:
        raise RuntimeError(f"the driver did not start (exit code {await driver.wait()})")
    start = json.loads(line)["t0"] + args.warmup
    end = start + args.duration
    await asyncio.sleep(start - time.time())
    processes = {**watched, "driver": [psutil.Process(driver.pid)], "client": [psutil.Process()]}
    cpu0 = {name: cpu_seconds(procs) for name, procs in processes.items()}
    pg0, batches0 = postgres_cpu_snapshot(), projection_batches(env.database_url)
    channel = f"{env.settings.redis_namespace}:bench:floor-loaded"
    loaded = asyncio.create_task(floor_probe(env.redis_url, channel, int(args.duration * 20), 0.05))
    await asyncio.sleep(end - time.time())
    cpu = {k: (cpu_seconds(p) - cpu0[k]) / args.duration for k, p in processes.items()}
    cpu["postgres"] = postgres_cpu_delta(pg0) / args.duration
    batches = (projection_batches(env.database_url) - batches0) / args.duration
    loaded_floor = await loaded
    if await driver.wait() != 0:
        raise RuntimeError(f"the driver exited with code {driver.returncode}")
    driven = json.loads(out.read_text())
    if driven["errors"]:
        raise RuntimeError(f"{len(driven['errors'])} saves failed, first: {driven['errors'][0]}")
    records: list[Record] = driven["records"]
    for _ in range(int(args.drain * 10)):  # stragglers
        if all(r[0] in arrivals for r in records):
            break
        await asyncio.sleep(0.1)

    window = [r for r in records if start <= r[1] < end]
    arrived = [r for r in window if r[0] in arrivals]
    both = [r for r in arrived if r[0] in tapped]
    events_per_s = len(window) / args.duration
    return {
        "generations_per_s": sum(1 for r in window if r[4] == 0) / args.duration,
        "events_per_s": events_per_s,
        "saves_per_s": len({(r[1], r[2]) for r in window}) / args.duration,
        "projection_batches_per_s": batches,
        "events_per_batch": events_per_s / batches if batches else float("nan"),
        "events_committed": len(records),
        "missing": sum(1 for r in records if r[0] not in arrivals),
        "commit_to_sse": stats([arrivals[r[0]] - r[1] for r in arrived]),
        "commit_to_redis": stats([tapped[r[0]] - r[1] for r in both]),
        "redis_to_sse": stats([arrivals[r[0]] - tapped[r[0]] for r in both]),
        "save_call": stats([r[1] - r[2] for r in window]),
        "behind_schedule": stats([r[1] - r[3] for r in window]),
        "floor_loaded": stats(loaded_floor),
        "cpu_cores": cpu,
    }


async def session(
    args: argparse.Namespace,
    env: Environment,
    port: int,
    created: list[Any],
    watched: dict[str, list[psutil.Process]],
) -> list[dict[str, Any]]:
    arrivals: dict[int, float] = {}
    tapped: dict[int, float] = {}
    opened = [asyncio.Event() for _ in created]
    tasks = [
        asyncio.create_task(sse_client(port, user.api_key, arrivals, event))
        for user, event in zip(created, opened, strict=True)
    ]
    tap_ready = asyncio.Event()
    pattern = f"{env.settings.redis_namespace}:live:user:*"
    tasks.append(asyncio.create_task(redis_tap(env.redis_url, pattern, tapped, tap_ready)))
    try:
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in [*opened, tap_ready])), 60)
        print(f"{len(created)} SSE subscribers open; Redis tap on {pattern}")
        repeats = []
        for repeat in range(args.repeats):
            channel = f"{env.settings.redis_namespace}:bench:floor"
            floor = stats(await floor_probe(env.redis_url, channel, args.floor_messages, 0.002))
            users = [str(u.user_id) for u in created]
            result = await load_repeat(args, env, users, watched, arrivals, tapped)
            repeats.append(result := {"floor": floor, **result})
            lat = result["commit_to_sse"]
            print(
                f"  repeat {repeat + 1}/{args.repeats}: {result['generations_per_s']:.1f} gen/s, "
                f"{lat['n']:,} events: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, max "
                f"{lat['max']:.0f} ms, missing {result['missing']} | floor p50 "
                f"{floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms"
            )
            if ended := [t for t in tasks if t.done()]:
                raise RuntimeError(f"a subscriber ended: {ended[0].exception()!r}")
        return repeats
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- report -----------------------------------------------------------------------------------

ROWS = (
    ("commit -> SSE subscriber", "commit_to_sse"),
    ("  commit -> Redis publish (projection)", "commit_to_redis"),
    ("  Redis publish -> subscriber (API)", "redis_to_sse"),
    ("Redis pub/sub floor, idle", "floor"),
    ("Redis pub/sub floor, under load", "floor_loaded"),
    ("driver: save() call", "save_call"),
    ("driver: commit behind schedule", "behind_schedule"),
)


def report(args: argparse.Namespace, repeats: list[dict[str, Any]], postgres: str) -> bool:
    def med(key: str, stat: str | None = None) -> float:
        return median([r[key][stat] if stat else r[key] for r in repeats])

    stat_names = ("p50", "p95", "p99", "max")
    rows = [[label, *(med(key, s) for s in stat_names), int(med(key, "n"))] for label, key in ROWS]
    p50, p99 = med("commit_to_sse", "p50"), med("commit_to_sse", "p99")
    missing = sum(r["missing"] for r in repeats)
    ratio = {
        s: median([r["commit_to_sse"][s] / r["floor"][s] for r in repeats]) for s in ("p50", "p99")
    }
    cpu = {k: median([r["cpu_cores"][k] for r in repeats]) for k in repeats[0]["cpu_cores"]}
    met = bool(p99 <= args.target_ms and missing == 0)
    print(
        f"\nmedians of {args.repeats} repeats, ms ({args.duration:g} s measured after "
        f"{args.warmup:g} s warm-up; {args.users} SSE subscribers)"
    )
    print(table(["measure", "p50", "p95", "p99", "max", "n"], rows))
    print(
        f"load: {med('generations_per_s'):.1f} generations/s (asked {args.rate:g}), "
        f"{med('events_per_s'):.0f} events/s, {med('saves_per_s'):.0f} saves/s; projection "
        f"~{med('projection_batches_per_s'):.0f} batches/s, ~{med('events_per_batch'):.1f} "
        f"events a batch; missing events {missing}"
    )
    print(f"latency / idle floor: p50 x{ratio['p50']:.0f}, p99 x{ratio['p99']:.0f}")
    print(f"cores busy (of {os.cpu_count()}): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    print(
        f"target p99 <= {args.target_ms:g} ms, nothing missing: {'MET' if met else 'NOT MET'} "
        f"(p50 {p50:.1f} ms, p99 {p99:.1f} ms)"
    )
    config = {k: v for k, v in vars(args).items() if k != "drive"}
    medians = {key: {s: med(key, s) for s in stat_names} for _, key in ROWS}
    written = write_result(
        NAME,
        {
            "config": config,
            "postgres": postgres,
            "target": {"p99_ms": args.target_ms, "met": met},
            "medians_ms": medians,
            "ratio_to_idle_floor": ratio,
            "missing_total": missing,
            "cpu_cores_median": cpu,
            "repeats": repeats,
        },
    )
    print(f"written {written}")
    return met


def log_problems(processes: list[ChildProcess]) -> None:
    """Each process's logged warnings and errors, and the exceptions in its tracebacks."""
    for process in processes:
        text = process.log_tail(1_000_000)
        logged = Counter(re.findall(r"\[(warning|error|critical) *\] ([^\n]{0,100})", text))
        raised = Counter(re.findall(r"^[│ ]*(\w+(?:Error|Exception): [^│\n]{0,100})", text, re.M))
        print(f"{process.name} log: {sum(logged.values())} warnings/errors")
        for (level, what), n in logged.most_common(5):
            print(f"  {n} x [{level}] {what.strip()}")
        for what, n in raised.most_common(5):
            print(f"  {n} x {what.strip()}")


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    add = parser.add_argument
    add("--users", type=int, default=100, help="users, one SSE stream each")
    add("--rate", type=float, default=100.0, help="new generations a second")
    add("--duration", type=float, default=20.0, help="measured seconds a repeat")
    add("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    add("--gap", type=float, default=0.3, help="seconds between a generation's saves")
    add("--repeats", type=int, default=3)
    add("--driver-threads", type=int, default=4)
    add("--floor-messages", type=int, default=1000)
    add("--drain", type=float, default=10.0, help="seconds to wait for stragglers")
    add("--target-ms", type=float, default=100.0)
    add("--drive", help=argparse.SUPPRESS)  # the driver child process's spec
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.drive:
        drive(json.loads(Path(args.drive).read_text()))
        return 0
    with bench_environment(NAME) as env, ExitStack() as stack:
        postgres = server_version(env.database_url)
        print(f"{NAME}: PostgreSQL {postgres}; load average {os.getloadavg()[0]:.2f}")
        c = build(env.settings)
        stack.callback(c.close)
        created = [c.users.create(f"live{i}@example.com", "1000") for i in range(args.users)]
        runner = launcher(env.settings, projections=("generations",))
        projection = stack.enter_context(
            ChildProcess("projections", runner, env.data_dir / "projections.log")
        )
        api = ApiProcess(env, free_port(), 1)
        stack.enter_context(api)
        print(f"pixevo api on {api.base_url}: healthy after {api.wait_healthy():.1f} s")
        projection.check()
        watched = {"api": api.processes(), "projection": [psutil.Process(projection.pid)]}
        try:
            repeats = run_async(session(args, env, api.port, created, watched))
        finally:
            log_problems([api, projection])
        api.check()
        projection.check()
        return 0 if report(args, repeats, postgres) else 1


if __name__ == "__main__":
    raise SystemExit(main())
