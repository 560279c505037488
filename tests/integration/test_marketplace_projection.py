"""The marketplace and earnings projections against real Postgres: the catalogue's search,
sorts and paging, a buyer's installs, a creator's earnings through refunds and debts, replayed
batches, and rebuilds that yield the same tables."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import pytest
from psycopg_pool import AsyncConnectionPool

from application.marketplace import payout_of
from domain.credits import Cause, to_units
from domain.earnings import replay
from domain.ids import uuid7
from domain.marketplace import PLATFORM_ACCOUNT_HOLDER
from domain.workflow import WorkflowTemplate
from interfaces.bootstrap import Container
from projections import admin, marketplace_queries
from projections.ledger_queries import BadCursor
from projections.runner import Notified

pytestmark = pytest.mark.integration

T = TypeVar("T")
GRAPH: dict[str, Any] = {
    "inputs": {"prompt": {"type": "text"}},
    "nodes": [{"id": "gen", "op": "generate", "params": {"model": "flux-dev"}}],
    "outputs": {"image": "$nodes.gen"},
}
TABLES = {
    "marketplace": {"listings": "id", "installs": "install_id"},
    "earnings": {
        "earning_holders": "account_id",
        "earnings": "account_id",
        "earning_items": "created_at, id",
    },
}


def query(container: Container, call: Callable[[AsyncConnectionPool], Awaitable[T]]) -> T:
    async def go() -> T:
        async with AsyncConnectionPool(container.database_url, min_size=1, open=False) as pool:
            return await call(pool)

    return asyncio.run(go())


def catch_up(container: Container) -> None:
    for name in ("marketplace", "earnings"):
        container.projection(name).catch_up()


def workflow(container: Container, owner: UUID, versions: int = 2) -> UUID:
    wf = WorkflowTemplate.create(uuid7(), owner, "wf", "a workflow to sell")
    for _ in range(versions):
        wf.add_version(GRAPH)
    container.workflows.save(wf)
    return wf.id


def funded(container: Container, credits: int = 100) -> UUID:
    user = uuid7()
    container.billing.open_account(user)
    if credits:
        container.billing.deposit(user, "grant", to_units(credits), Cause("grant", str(user)))
    return user


def sell(container: Container, buyer: UUID, listing_id: UUID) -> UUID:
    """An install as the request and the payout reaction make it."""
    made, _ = container.marketplace.install(buyer, listing_id)
    install = container.marketplace.installed(made["install_id"])
    container.billing.pay_out([payout_of(install)])
    return install.id


def contents(container: Container, projection: str, schema: str) -> dict[str, list[Any]]:
    with container.pool.connection() as conn:
        return {
            table: conn.execute(f"SELECT * FROM {schema}.{table} ORDER BY {order}").fetchall()
            for table, order in TABLES[projection].items()
        }


def all_pages(
    container: Container, q: str | None, sort: str | None, limit: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page, cursor = query(
            container,
            lambda pool, c=cursor: marketplace_queries.listings(pool, q, sort, limit, c),
        )
        assert len(page) <= limit
        rows += page
        if cursor is None:
            return rows


def test_catalogue_search_sorts_pages_and_unlists(container: Container) -> None:
    creator = uuid7()
    wf = workflow(container, creator)
    market = container.marketplace
    specs = [
        ("Watercolour portraits", "Soft brush strokes, painted beside a lighthouse", 7),
        ("Lighthouse at dusk", "A coast at evening", 3),
        ("Neon city", "Rain and reflections", 12),
        ("Forest mist", "Morning fog in pines", 3),
        ("Desert dunes", "Sand and sky", 9),
        ("Old maps", "Sepia cartography", 1),
        ("Quiet lake", "Still water", 5),
    ]
    ids = [
        market.create_listing(creator, wf, 1, title, text, to_units(price))["id"]
        for title, text, price in specs
    ]
    buyers = [funded(container) for _ in range(3)]
    for n, listing_id in ((3, ids[2]), (2, ids[4]), (1, ids[0])):
        for buyer in buyers[:n]:
            sell(container, buyer, listing_id)
    catch_up(container)

    found = query(container, lambda pool: marketplace_queries.listing(pool, ids[2]))
    assert found is not None
    assert found["installs"] == 3
    assert found["price_credits"] == Decimal("12.0000")
    assert found["status"] == "listed"
    assert set(found) == {
        "id", "workflow_id", "version", "title", "description", "price_credits", "creator_id",
        "status", "installs", "created_at", "updated_at",
    }  # fmt: skip

    # a word only in one description finds it; a title match ranks above it
    hits, _ = query(
        container, lambda p: marketplace_queries.listings(p, "lighthouses", None, 10, None)
    )
    assert [h["id"] for h in hits] == [ids[1], ids[0]]
    hits, _ = query(container, lambda p: marketplace_queries.listings(p, "brush", None, 10, None))
    assert [h["id"] for h in hits] == [ids[0]]
    hits, _ = query(
        container, lambda p: marketplace_queries.listings(p, "lighthouse", "price", 10, None)
    )
    assert [h["id"] for h in hits] == [ids[1], ids[0]]
    ranked = all_pages(container, "lighthouse OR fog OR rain", None, 1)
    assert {r["id"] for r in ranked} == {ids[0], ids[1], ids[2], ids[3]}
    assert len(ranked) == 4

    whole = {
        sort: query(
            container, lambda p, s=sort: marketplace_queries.listings(p, None, s, 100, None)
        )[0]
        for sort in ("newest", "installs", "price")
    }
    assert [r["id"] for r in whole["newest"]] == list(reversed(ids))
    assert [r["installs"] for r in whole["installs"]][:3] == [3, 2, 1]
    assert [r["id"] for r in whole["installs"]][:3] == [ids[2], ids[4], ids[0]]
    prices = [(r["price_credits"], r["id"]) for r in whole["price"]]
    assert prices == sorted(prices)
    assert prices[0][1] == ids[5]
    for sort, rows in whole.items():
        for limit in (1, 2, 3):
            paged = all_pages(container, None, sort, limit)
            assert [r["id"] for r in paged] == [r["id"] for r in rows], (sort, limit)
    default, _ = query(container, lambda p: marketplace_queries.listings(p, None, None, 100, None))
    assert default == whole["newest"]

    _, cursor = query(container, lambda p: marketplace_queries.listings(p, None, "price", 2, None))
    assert cursor is not None
    for bad, sort in ((cursor, "newest"), ("not-a-cursor", "price")):
        with pytest.raises(BadCursor):
            query(
                container, lambda p, b=bad, s=sort: marketplace_queries.listings(p, None, s, 2, b)
            )

    market.unlist(creator, ids[4])
    catch_up(container)
    browse = all_pages(container, None, None, 3)
    assert ids[4] not in [r["id"] for r in browse]
    assert len(browse) == len(ids) - 1
    gone = query(container, lambda pool: marketplace_queries.listing(pool, ids[4]))
    assert gone is not None and gone["status"] == "unlisted" and gone["installs"] == 2
    assert query(container, lambda pool: marketplace_queries.listing(pool, uuid7())) is None


def test_installs_earnings_refunds_debts_and_rebuilds(container: Container) -> None:
    creator, admin_id = funded(container, 0), uuid7()
    wf = workflow(container, creator)
    listing_id = container.marketplace.create_listing(
        creator, wf, 1, "Portraits", "Faces", to_units(10)
    )["id"]
    first, second = funded(container), funded(container)
    sold = sell(container, first, listing_id)
    # the creator spends the earning (8 of 10 credits; the platform's fee is 2)
    container.billing.spend(creator, to_units(8), Cause("test_spend", "x"), {})
    container.marketplace.refund(admin_id, sold, "not as described")
    resold = sell(container, second, listing_id)
    container.marketplace.offer_version(creator, listing_id, 2)
    catch_up(container)

    got = query(container, lambda pool: marketplace_queries.listing(pool, listing_id))
    assert got is not None and got["installs"] == 1 and got["version"] == 2
    rows, cursor = query(
        container, lambda pool: marketplace_queries.installs(pool, first, 10, None)
    )
    assert cursor is None
    assert [(r["install_id"], r["status"], r["update_available"]) for r in rows] == [
        (sold, "refunded", False)
    ]
    rows, _ = query(container, lambda pool: marketplace_queries.installs(pool, second, 10, None))
    assert rows[0]["install_id"] == resold
    assert (rows[0]["version"], rows[0]["offered_version"]) == (1, 2)
    assert rows[0]["update_available"] is True
    assert rows[0]["price_credits"] == Decimal("10.0000")
    container.marketplace.upgrade(second, rows[0]["workflow_id"])
    catch_up(container)
    rows, _ = query(container, lambda pool: marketplace_queries.installs(pool, second, 10, None))
    assert (rows[0]["version"], rows[0]["update_available"]) == (2, False)

    earned = query(container, lambda pool: marketplace_queries.earnings(pool, creator, 10, None))
    assert (earned["total_credits"], earned["earned"], earned["clawed_back"], earned["owed"]) == (
        Decimal("8.0000"), Decimal("16.0000"), Decimal("8.0000"), Decimal("0.0000"),
    )  # fmt: skip
    assert (earned["installs"], earned["refunds"]) == (2, 1)
    assert [i["kind"] for i in earned["items"]] == ["settled", "earning", "clawback", "earning"]
    assert earned["items"][2]["note"] == "8.0000 owed"
    assert earned["items"][2]["cause_id"] == str(sold)
    assert earned["next_cursor"] is None
    top, cursor = (
        query(container, lambda p: marketplace_queries.earnings(p, creator, 3, None)),
        None,
    )
    cursor = top["next_cursor"]
    assert cursor is not None
    rest = query(container, lambda p: marketplace_queries.earnings(p, creator, 3, cursor))
    assert top["items"] + rest["items"] == earned["items"]
    fee = query(
        container, lambda p: marketplace_queries.earnings(p, PLATFORM_ACCOUNT_HOLDER, 10, None)
    )
    # the platform's fee of the refunded sale was clawed back at once: the fees were available
    assert (fee["total_credits"], fee["owed"], fee["installs"], fee["refunds"]) == (
        Decimal("2.0000"), Decimal("0.0000"), 2, 1,
    )  # fmt: skip
    never = query(container, lambda p: marketplace_queries.earnings(p, first, 10, None))
    assert never == {
        "total_credits": 0, "earned": 0, "clawed_back": 0, "owed": 0, "installs": 0,
        "refunds": 0, "items": [], "next_cursor": None,
    }  # fmt: skip
    with container.pool.connection() as conn:
        holders = conn.execute("SELECT count(*) FROM proj_earnings.earnings").fetchone()
    assert holders == (2,)  # the seller and the platform; buyers never earned

    # the projection's rows are the audit's fold of the event store
    position, items = container.billing.earnings(creator)
    assert position.total == to_units(8) and len(items) == 4

    # a debt shows while it is owed: the position after the refund, before the resale
    events = list(container.billing.events.get(position.account_id))
    refunded_at = next(i.at for i in items if i.kind == "clawback")
    owing, _ = replay(position.account_id, events, until=refunded_at)
    assert (owing.owed, owing.total) == (to_units(8), 0)

    for name in ("marketplace", "earnings"):
        live = container.projection(name)
        schema = live.view.schema
        before = contents(container, name, schema)
        assert all(before.values())
        admin.rebuild(live, container.projection(name, schema=f"{schema}_rebuild"))
        assert contents(container, name, schema) == before
        fresh = container.projection(name, schema=f"{schema}_check")
        fresh.catch_up()
        assert contents(container, name, f"{schema}_check") == before


def test_a_replayed_batch_changes_nothing(container: Container) -> None:
    creator = funded(container, 0)
    wf = workflow(container, creator)
    listing_id = container.marketplace.create_listing(creator, wf, 1, "T", "D", to_units(4))["id"]
    buyer = funded(container)
    sold = sell(container, buyer, listing_id)
    container.marketplace.refund(uuid7(), sold, "twice")
    sell(container, funded(container), listing_id)
    for name, app in (("marketplace", container.marketplace), ("earnings", container.billing)):
        runner = container.projection(name)
        runner.catch_up()
        schema = runner.view.schema
        before = contents(container, name, schema)
        batch = [
            Notified(n.id, app.mapper.to_domain_event(n))  # type: ignore[arg-type]
            for n in app.recorder.select_notifications(1, 1000, topics=runner.view.topics)
        ]
        with runner.view.datastore.transaction(commit=True) as curs:
            runner.view.project(curs, batch)
        assert contents(container, name, schema) == before
    got = query(container, lambda pool: marketplace_queries.listing(pool, listing_id))
    assert got is not None and got["installs"] == 1


def test_a_first_earning_after_the_account_was_projected_knows_its_holder(
    container: Container,
) -> None:
    """The seller's account is opened (and projected) long before its first sale: the batch
    with that sale finds the holder an earlier batch recorded."""
    creator = funded(container, 0)
    catch_up(container)
    wf = workflow(container, creator)
    listing_id = container.marketplace.create_listing(creator, wf, 1, "T", "D", to_units(5))["id"]
    sell(container, funded(container), listing_id)
    catch_up(container)
    earned = query(container, lambda pool: marketplace_queries.earnings(pool, creator, 10, None))
    assert (earned["installs"], earned["earned"]) == (1, Decimal("4.0000"))
