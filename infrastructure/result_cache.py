"""The generation cache over the generations read table (:class:`ResultCache` port)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

SCHEMA = "proj_generations"


class ProjectedResultCache:
    """Finds a completed result for a fingerprint, made by the model that was asked for (not a
    fallback's, not itself a cache hit).

    Reading the read model here is an optimisation, not a guarantee: a miss (say, the
    projection lags) only means the provider is asked once more.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def find(self, fingerprint: str) -> tuple[UUID, dict[str, Any]] | None:
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT id, result_metadata FROM {SCHEMA}.generations WHERE fingerprint = %s "
                "AND status = 'completed' AND NOT served_from_cache AND fallback_from IS NULL "
                # only results that went through the pipeline and the classifier
                "AND result_metadata ? 'processed' ORDER BY created_at LIMIT 1",
                [fingerprint],
            ).fetchone()
        return (row[0], row[1]) if row and row[1] else None
