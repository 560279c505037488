"""Ordered SQL migrations (``migrations/NNNN_*.sql``), each applied once, under a lock."""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_KEY = 0x5049_5845  # "PIXE": one migrator at a time, across processes


def pending(conn: psycopg.Connection[TupleRow]) -> list[Path]:
    applied = {row[0] for row in conn.execute("SELECT name FROM public.pixevo_migrations")}
    return [path for path in sorted(MIGRATIONS_DIR.glob("[0-9]*.sql")) if path.name not in applied]


def migrate(database_url: str) -> list[str]:
    """Applies the migrations not applied yet; returns their names."""
    done: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS public.pixevo_migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for path in pending(conn):
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute(
                        "INSERT INTO public.pixevo_migrations (name) VALUES (%s)", [path.name]
                    )
                done.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
    return done
