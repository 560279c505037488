"""The generation cache over the generations read table (the :class:`ResultCache` port)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool

from projections import generation_queries


class ProjectedResultCache:
    """Finds a completed result for a fingerprint, made by the model that was asked for (not a
    fallback's, not itself a cache hit).

    Reading the read model here is an optimisation, not a guarantee: a miss (say, the
    projection lags) only means the provider is asked once more.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def find(self, fingerprint: str) -> tuple[UUID, dict[str, Any]] | None:
        return generation_queries.cached_result(self.pool, fingerprint)
