"""Real PostgreSQL and Redis for the tests: the configured ones, or the embedded default.

Each test database is created with a unique name and dropped afterwards; Redis keys live under
a unique namespace and are deleted afterwards. Nothing else on the servers is touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infrastructure import embedded


def server_urls(scratch: Path) -> tuple[str, str]:
    """(PostgreSQL URL of a maintenance database, Redis URL)."""
    db = os.environ.get("PIXEVO_DATABASE_URL") or embedded.start_postgres(scratch)
    rd = os.environ.get("PIXEVO_REDIS_URL") or embedded.start_redis(scratch)
    return db, rd


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


@contextmanager
def scratch_database(server_url: str, prefix: str = "pixevo_test") -> Iterator[str]:
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
def scratch_namespace(redis_url: str, prefix: str = "pixevo-test") -> Iterator[str]:
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
