"""The model_timings projection: how long each model takes from submission to result.

Estimated progress for models that report none is drawn from these figures. A generation's
time runs from its latest ``Submitted`` (after a fallback, the model it fell back to) to
``Produced``; results served from the cache were never submitted and add nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from psycopg import Cursor
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from application.live import Estimate, estimate
from application.logs import topic_of
from domain.generation import Generation
from projections.base import NotifiedEvent, ProjectionView

#: The recent window the percentiles cover, and how long samples are kept at all.
WINDOW = timedelta(hours=24)
RETENTION = timedelta(days=7)
#: Below this many samples in the window, a model's catalogue figures are used instead.
MIN_SAMPLES = 20


class ModelTimingsView(ProjectionView):
    projection_name = "model_timings"
    upstream = "generations"
    topics = tuple(
        topic_of(cls)
        for cls in (
            Generation.Queued,
            Generation.FellBack,
            Generation.Submitted,
            Generation.Produced,
            Generation.Failed,
            Generation.Cancelled,
            Generation.Blocked,
        )
    )

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        for item in batch:
            event, key = item.event, item.event.originator_id
            if isinstance(event, Generation.Queued):
                curs.execute(
                    f"INSERT INTO {self.schema}.running (generation_id, model) VALUES (%s, %s) "
                    "ON CONFLICT (generation_id) DO NOTHING",
                    [key, event.model],
                )
            elif isinstance(event, Generation.FellBack):
                curs.execute(
                    f"UPDATE {self.schema}.running SET model = %s, submitted_at = NULL "
                    "WHERE generation_id = %s",
                    [event.to_model, key],
                )
            elif isinstance(event, Generation.Submitted):
                curs.execute(
                    f"UPDATE {self.schema}.running SET submitted_at = %s WHERE generation_id = %s",
                    [event.timestamp, key],
                )
            elif isinstance(event, Generation.Produced):
                curs.execute(
                    f"WITH done AS (DELETE FROM {self.schema}.running WHERE generation_id = %s "
                    "RETURNING model, submitted_at) "
                    f"INSERT INTO {self.schema}.samples (model, finished_at, duration_ms) "
                    "SELECT model, %s, greatest(0, (extract(epoch FROM %s - submitted_at) "
                    "* 1000)::integer) FROM done WHERE submitted_at IS NOT NULL",
                    [key, event.timestamp, event.timestamp],
                )
            else:  # failed, cancelled or blocked by the provider: no sample
                curs.execute(f"DELETE FROM {self.schema}.running WHERE generation_id = %s", [key])
        curs.execute(
            f"DELETE FROM {self.schema}.samples WHERE finished_at < now() - %s", [RETENTION]
        )


@dataclass(frozen=True, slots=True)
class Timing:
    p50_ms: float
    p95_ms: float
    samples: int


async def recent(pool: AsyncConnectionPool) -> dict[str, Timing]:
    """Each model's P50 and P95 over :data:`WINDOW`, for models with enough samples."""
    schema = ModelTimingsView.live_schema()
    async with pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT model, count(*) AS n, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50, "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95 "
            f"FROM {schema}.samples WHERE finished_at > now() - %s GROUP BY model",
            [WINDOW],
        )
        return {
            row["model"]: Timing(float(row["p50"]), float(row["p95"]), int(row["n"]))
            for row in await cur.fetchall()
            if row["n"] >= MIN_SAMPLES
        }


class Timings:
    """Each model's recent P50/P95 in seconds (refreshed every ``ttl_s``), else ``seed(model)``:
    the catalogue's figures until a model has :data:`MIN_SAMPLES` in the window."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        seed: Callable[[str], tuple[float, float]],
        ttl_s: float = 30.0,
    ) -> None:
        self.pool, self.seed, self.ttl_s = pool, seed, ttl_s
        self._recent: dict[str, Timing] = {}
        self._fresh_until = 0.0

    async def of(self, model: str) -> tuple[float, float]:
        if time.monotonic() > self._fresh_until:
            self._fresh_until = time.monotonic() + self.ttl_s
            self._recent = await recent(self.pool)
        found = self._recent.get(model)
        if found is not None:
            return found.p50_ms / 1000, found.p95_ms / 1000
        return self.seed(model)

    async def estimate(self, model: str, running_since: datetime) -> Estimate:
        p50, p95 = await self.of(model)
        return estimate((datetime.now(UTC) - running_since).total_seconds(), p50, p95)
