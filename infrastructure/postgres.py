"""The event store on PostgreSQL: settings for the library, and our recorder subclasses."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Identifier

from application.logs import read_after


def connection_params(database_url: str) -> dict[str, str]:
    """``POSTGRES_*`` keys of the eventsourcing library for a PostgreSQL URL."""
    info = conninfo_to_dict(database_url)
    return {
        "POSTGRES_DBNAME": str(info.get("dbname") or info.get("user") or "postgres"),
        "POSTGRES_HOST": str(info.get("host") or "localhost"),
        "POSTGRES_PORT": str(info.get("port") or "5432"),
        "POSTGRES_USER": str(info.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(info.get("password") or ""),
    }


def eventstore_env(
    database_url: str, schema: str, *, pool_size: int = 1, max_overflow: int = 4
) -> dict[str, str]:
    """The library environment for one bounded context, whose tables live in ``schema``.

    A process holds one pool per context, so its connections grow with the contexts: five
    connections at most each (the writes are short; the threads of a process take turns)."""
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        **connection_params(database_url),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(max_overflow),
        "POSTGRES_CONNECT_TIMEOUT": "10",
        "POSTGRES_LOCK_TIMEOUT": "5",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "5",
        # no pre-ping: it costs a round trip per checkout, and the library's recorder methods
        # already retry on connection errors
        "POSTGRES_PRE_PING": "n",
        # Reactions may arrive out of order (parallel workers), so tracking records are one row
        # per processed notification rather than a single high-water mark.
        "SINGLE_ROW_TRACKING": "n",
        "PROCESS_RECORDER_TOPIC": f"{__name__}:EventStoreRecorder",
        "AGGREGATE_CACHE_MAXSIZE": "5000",
    }


def datastore(
    database_url: str,
    schema: str,
    *,
    pool_size: int = 1,
    max_overflow: int = 1,
    single_row_tracking: bool = True,
) -> PostgresDatastore:
    """A projection's store: its runner writes one batch at a time (two connections: one
    holds the DDL lock while creating tables takes the other)."""
    params = connection_params(database_url)
    return PostgresDatastore(
        dbname=params["POSTGRES_DBNAME"],
        host=params["POSTGRES_HOST"],
        port=params["POSTGRES_PORT"],
        user=params["POSTGRES_USER"],
        password=params["POSTGRES_PASSWORD"],
        schema=schema,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_timeout=10,
        idle_in_transaction_session_timeout=30,
        pre_ping=True,
        single_row_tracking=single_row_tracking,
    )


class EventStoreRecorder(PostgresProcessRecorder):
    """The recorder of every Pixevo application: its events, plus tracking of what it processed.

    Reactions run on parallel workers, so they may process an upstream log out of order: the
    tracking table keeps one row per processed notification (``SINGLE_ROW_TRACKING=n``), and
    :meth:`has_processed` asks about *that* notification, where the library's
    ``has_tracking_id`` answers "has anything at or beyond it been processed".
    """

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.has_processed_statement = SQL(
            "SELECT 1 FROM {}.{} WHERE application_name = %s AND notification_id = %s"
        ).format(Identifier(datastore.schema), Identifier(self.tracking_table_name))

    def has_processed(self, application_name: str, notification_id: int) -> bool:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(
                self.has_processed_statement, [application_name, notification_id], prepare=True
            )
            return curs.fetchone() is not None

    def read_after(
        self, position: int, limit: int, topics: Sequence[str] = ()
    ) -> tuple[list[Notification], int]:
        return read_after(self, position, limit, topics)


def become_leader(conn: psycopg.Connection[Any], key: int, stopping: threading.Event) -> bool:
    """Waits until this session holds the advisory lock ``key`` (one leader among hot standbys:
    the lock goes with the session, so a leader that dies hands over at once); ``False`` if
    asked to stop first."""
    while not stopping.is_set():
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
        if row and row[0]:
            return True
        stopping.wait(1.0)
    return False
