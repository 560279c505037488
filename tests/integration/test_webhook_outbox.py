"""The webhooks outbox projection on PostgreSQL: a delivery per (endpoint, event) whichever
view runs first, none for an endpoint registered after the event, nothing more on a replay,
redelivery copies in order behind what is pending, and the failing-endpoints gauge."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from psycopg_pool import AsyncConnectionPool

from domain.generation import Generation
from interfaces.bootstrap import Container
from projections import webhook_queries
from projections.webhooks import SCHEMA, message_id

URL = "https://93.184.215.14/hook"


def failed_generation(container: Container, user_id: UUID, seed: int) -> UUID:
    generation = Generation.request(
        generation_id=uuid4(),
        user_id=user_id,
        model="sim-instant",
        provider="replicate",
        prompt="a lighthouse",
        negative_prompt=None,
        params={"seed": seed},
        output_format="png",
        quote=100,
        allow_fallback=False,
        fingerprint=f"fp{seed}",
        request_hash=f"rh{seed}",
    )
    generation.fail("provider_error", "the provider said no")
    container.generations.save(generation)
    return generation.id


def project(container: Container, *names: str) -> None:
    for name in names:
        container.projection(name).catch_up()


def deliveries(container: Container, endpoint_id: Any) -> list[dict[str, Any]]:
    with container.pool.connection() as conn:
        cur = conn.execute(
            f"SELECT sequence, message_id, event_type, redelivery, status "
            f"FROM {SCHEMA}.deliveries WHERE endpoint_id = %s ORDER BY sequence",
            [endpoint_id],
        )
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_one_delivery_whichever_view_runs_first_and_none_on_replay(container: Container) -> None:
    owner = uuid4()
    # registered first, but its registration projected after the events
    early = container.webhooks.register(owner, URL, ["generation.failed"])
    first = failed_generation(container, owner, 1)
    project(container, "webhook_generations")
    assert deliveries(container, early["id"]) == []
    project(container, "webhook_endpoints")
    (made,) = deliveries(container, early["id"])
    assert made["event_type"] == "generation.failed"
    assert made["message_id"].startswith("msg_")

    # known before the event: fanned out as the event is projected
    second = failed_generation(container, owner, 2)
    project(container, "webhook_generations", "webhook_endpoints")
    sent = deliveries(container, early["id"])
    assert len(sent) == 2
    with container.pool.connection() as conn:
        payloads = [
            conn.execute(
                f"SELECT payload FROM {SCHEMA}.events WHERE message_id = %s", [d["message_id"]]
            ).fetchone()
            for d in sent
        ]
    assert [p[0]["id"] for p in payloads if p] == [str(first), str(second)]
    assert payloads[0] and payloads[0][0]["error"]["code"] == "provider_error"

    # registered after both events: it gets neither; another type: neither
    late = container.webhooks.register(owner, URL, ["generation.failed"])
    other = container.webhooks.register(owner, URL, ["generation.completed"])
    project(container, "webhook_endpoints")
    assert deliveries(container, late["id"]) == []
    assert deliveries(container, other["id"]) == []

    # a replayed batch (the tracking rows lost) adds nothing
    with container.pool.connection() as conn:
        conn.execute(f"DELETE FROM {SCHEMA}.webhook_generations_tracking")
        conn.execute(f"DELETE FROM {SCHEMA}.webhook_endpoints_tracking")
    project(container, "webhook_generations", "webhook_endpoints")
    assert deliveries(container, early["id"]) == sent


def test_redelivery_copies_follow_what_is_pending_in_order(container: Container) -> None:
    owner = uuid4()
    endpoint = container.webhooks.register(owner, URL, ["generation.failed"])
    project(container, "webhook_endpoints")
    start = datetime.now(UTC) - timedelta(seconds=1)
    for seed in (3, 4, 5):
        failed_generation(container, owner, seed)
    project(container, "webhook_generations")
    originals = deliveries(container, endpoint["id"])
    assert len(originals) == 3

    async def go() -> tuple[int, int, list[dict[str, Any]], list[dict[str, Any]], str | None]:
        pool = AsyncConnectionPool(
            container.database_url, open=False, min_size=1, max_size=2, kwargs={"autocommit": True}
        )
        await pool.open()
        try:
            queued = await webhook_queries.redeliver(pool, owner, endpoint["id"], start, None)
            none = await webhook_queries.redeliver(
                pool, owner, endpoint["id"], start - timedelta(days=2), start - timedelta(days=1)
            )
            page, cursor = await webhook_queries.deliveries(pool, endpoint["id"], 4, None)
            rest, end = await webhook_queries.deliveries(pool, endpoint["id"], 4, cursor)
        finally:
            await pool.close()
        return queued, none, page, rest, end

    queued, none, page, rest, end = asyncio.run(go())
    assert (queued, none) == (3, 0)
    every = deliveries(container, endpoint["id"])
    copies = every[3:]
    assert [c["message_id"] for c in copies] == [o["message_id"] for o in originals]
    assert all(c["redelivery"] and c["status"] == "pending" for c in copies)
    assert min(c["sequence"] for c in copies) > max(o["sequence"] for o in originals)
    # newest first, paged
    assert [r["sequence"] for r in page + rest] == [d["sequence"] for d in reversed(every)]
    assert end is None


def test_failing_endpoints_counts_heads_that_failed(container: Container) -> None:
    owner = uuid4()
    endpoint = container.webhooks.register(owner, URL, ["generation.failed"])
    project(container, "webhook_endpoints")
    failed_generation(container, owner, 6)
    project(container, "webhook_generations")
    assert webhook_queries.failing_endpoints(container.pool) == 0
    (head,) = deliveries(container, endpoint["id"])
    with container.pool.connection() as conn:
        webhook_queries.record_failure(
            conn,
            head["sequence"],
            UUID(str(endpoint["id"])),
            500,
            None,
            datetime.now(UTC),
            datetime.now(UTC) + timedelta(seconds=5),
        )
    assert webhook_queries.failing_endpoints(container.pool) == 1


def test_message_ids_are_stable_per_application_and_position() -> None:
    assert message_id("generations", 7) == message_id("generations", 7)
    assert message_id("generations", 7) != message_id("workflows", 7)
    assert message_id("generations", 7) != message_id("generations", 8)


def test_a_disabled_endpoint_keeps_its_events_pending_until_enabled(container: Container) -> None:
    owner = uuid4()
    endpoint = container.webhooks.register(owner, URL, ["generation.failed"])
    assert container.webhooks.disable(endpoint["id"], "failing since then: last status 500")
    project(container, "webhook_endpoints")
    failed_generation(container, owner, 7)
    project(container, "webhook_generations")
    (pending,) = deliveries(container, endpoint["id"])
    assert pending["status"] == "pending"
    with container.pool.connection() as conn:
        assert webhook_queries.claim(conn, datetime.now(UTC)) is None  # not sent while disabled
    container.webhooks.enable(owner, endpoint["id"])
    project(container, "webhook_endpoints")
    with container.pool.connection() as conn:
        assert webhook_queries.claim(conn, datetime.now(UTC)) == endpoint["id"]
