"""The model_timings projection: submission-to-result times per model, P50/P95 over a window,
the catalogue's figures until there are enough samples; and the feed's re-publishing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from psycopg_pool import AsyncConnectionPool

from application.normalise import GenerationRequest
from domain.generation import Generation
from domain.ids import uuid7
from infrastructure.postgres import datastore
from interfaces.bootstrap import Container
from projections import model_timings
from projections.generations import GenerationsView
from projections.model_timings import MIN_SAMPLES, Timings
from projections.runner import ProjectionRunner

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Item:
    notification_id: int
    event: Any


def lifecycle(
    position: int, model: str, seconds: float, *, fell_back_to: str | None = None
) -> list[Item]:
    """The events model_timings reads, of one generation that ran ``seconds`` on its model."""
    key, start = uuid7(), datetime.now(UTC) - timedelta(minutes=5)
    events: list[Any] = [
        Generation.Queued(
            originator_id=key, originator_version=3, timestamp=start, model=model, provider="p"
        ),
    ]
    if fell_back_to:
        events.append(
            Generation.FellBack(
                originator_id=key,
                originator_version=4,
                timestamp=start,
                from_model=model,
                to_model=fell_back_to,
                provider="q",
                reason="outage",
            )
        )
    submitted = start + timedelta(seconds=1)
    events += [
        Generation.Submitted(
            originator_id=key, originator_version=5, timestamp=submitted, job_id="j", attempt=1
        ),
        Generation.Produced(
            originator_id=key,
            originator_version=6,
            timestamp=submitted + timedelta(seconds=seconds),
            storage_key="k",
            width=1,
            height=1,
            content_type="image/png",
            size_bytes=1,
            provider_ms=0,
        ),
    ]
    return [Item(position + i, event) for i, event in enumerate(events)]


def timings_of(container: Container) -> tuple[dict[str, model_timings.Timing], Timings]:
    async def read() -> tuple[dict[str, model_timings.Timing], tuple[float, float]]:
        async with AsyncConnectionPool(container.database_url, min_size=1, open=False) as pool:
            timings = Timings(pool, container.seed_timing)
            return await model_timings.recent(pool), await timings.of("flux-dev")

    recent, seeded = asyncio.run(read())
    return recent, seeded  # type: ignore[return-value]


def test_percentiles_per_model_after_enough_samples_else_the_catalogue(
    container: Container,
) -> None:
    runner = container.projection("model_timings")
    runner.start()
    batch: list[Item] = []
    for n in range(1, MIN_SAMPLES + 1):  # 1 s .. 20 s on flux-schnell
        batch += lifecycle(len(batch) + 1, "flux-schnell", float(n))
    batch += lifecycle(len(batch) + 1, "flux-dev", 3.0)  # one sample: not enough
    batch += lifecycle(len(batch) + 1, "flux-dev", 50.0, fell_back_to="sdxl-lightning")
    with runner.view.datastore.transaction(commit=True) as curs:
        runner.view.project(curs, batch)
    recent, flux_dev = timings_of(container)
    assert set(recent) == {"flux-schnell"}
    assert recent["flux-schnell"].samples == MIN_SAMPLES
    assert recent["flux-schnell"].p50_ms == pytest.approx(10_500)
    assert recent["flux-schnell"].p95_ms == pytest.approx(19_050)
    assert flux_dev == (6.0, 12.0)  # the catalogue's figures
    with container.pool.connection() as conn:
        fell_back = conn.execute(
            "SELECT duration_ms FROM proj_model_timings.samples WHERE model = 'sdxl-lightning'"
        ).fetchall()
        running = conn.execute("SELECT count(*) FROM proj_model_timings.running").fetchone()
    assert fell_back == [(50_000,)]  # counted for the model that produced it
    assert running == (0,)


def test_a_cached_result_adds_no_sample(container: Container) -> None:
    runner = container.projection("model_timings")
    runner.start()
    key: UUID = uuid7()
    now = datetime.now(UTC)
    produced = Generation.Produced(
        originator_id=key,
        originator_version=3,
        timestamp=now,
        storage_key="k",
        width=1,
        height=1,
        content_type="image/png",
        size_bytes=1,
        provider_ms=0,
    )
    with runner.view.datastore.transaction(commit=True) as curs:
        runner.view.project(curs, [Item(1, produced)])
    with container.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM proj_model_timings.samples").fetchone() == (0,)


class Crash(Exception):
    pass


class Recorder:
    def __init__(self, crash: bool = False) -> None:
        self.crash, self.sent = crash, []  # type: ignore[var-annotated]

    def publish(self, messages: Any) -> None:
        if self.crash:
            raise Crash
        self.sent.extend(messages)


def test_a_feed_runner_that_died_before_publishing_sends_it_on_start(container: Container) -> None:

    user = container.users.create("feed@example.com", "5")

    asked = GenerationRequest(model="sim-instant", prompt="p", params={"width": 64, "height": 64})
    generation, _ = container.generations.request(user.user_id, asked, None)
    apps = container.generations

    def runner(publisher: Recorder) -> ProjectionRunner:
        view = GenerationsView(
            datastore(container.database_url, GenerationsView.live_schema()), publisher=publisher
        )
        return ProjectionRunner(view, apps.recorder, apps.mapper)

    dying = runner(Recorder(crash=True))
    with pytest.raises(Crash):
        dying.run_batch()  # committed, then died before publishing
    assert dying.position() == apps.recorder.max_notification_id()
    restarted = Recorder()
    runner(restarted).start()
    assert [m.generation_id for m in restarted.sent] == [generation.id]
    assert restarted.sent[0].data["status"] == "requested"
    again = Recorder()
    runner(again).start()  # already sent: nothing twice
    assert again.sent == []
