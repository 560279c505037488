"""Read-your-own-writes on the read side: the head of a log, and waiting for a projection."""

from __future__ import annotations

import asyncio

import pytest
from psycopg_pool import AsyncConnectionPool

from interfaces.bootstrap import Container
from projections import position_queries
from projections.generations import GenerationsView
from projections.ledger import LedgerView

pytestmark = pytest.mark.integration


def test_a_projection_is_waited_for_until_it_reaches_the_log_s_head(
    container: Container,
) -> None:
    container.users.create("reader@example.com", "5")  # events in the billing log

    async def before() -> tuple[int, int, bool, bool]:
        async with AsyncConnectionPool(container.database_url, min_size=1, open=False) as pool:
            head = await position_queries.log_head(pool, "billing")
            at = await position_queries.projected_to(pool, LedgerView)
            waited = await position_queries.wait_until_projected(
                pool, LedgerView, head, timeout_s=0.2
            )
            empty = await position_queries.wait_for_head(pool, GenerationsView, timeout_s=0)
            return head, at, waited, empty

    head, at, waited, nothing_to_wait_for = asyncio.run(before())
    assert head > 0
    assert at == 0
    assert not waited  # the ledger projection has not run
    assert nothing_to_wait_for  # the generations log is empty: nothing to wait for

    async def after() -> tuple[bool, int]:
        async with AsyncConnectionPool(container.database_url, min_size=1, open=False) as pool:
            projecting = asyncio.create_task(
                asyncio.to_thread(container.projection("ledger").catch_up)
            )
            waited = await position_queries.wait_until_projected(
                pool, LedgerView, head, timeout_s=30
            )
            await projecting
            return waited, await position_queries.projected_to(pool, LedgerView)

    waited, at = asyncio.run(after())
    assert waited
    assert at >= head
