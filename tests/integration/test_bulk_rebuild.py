"""Rebuilds in bulk (:mod:`projections.bulk`) give exactly the tables the live path gives.

The ledger and the generations projections are built from logs holding every event kind they
handle, once in bulk (with memory for all of it, and with so little that it writes, forgets and
reloads its rows many times) and once by the runner's incremental catch-up: the tables and the
tracked position must be the same. After a rebuild swapped in, the live runner continues from
the rebuilt tables exactly once. And the fast decoder the bulk path reads with gives the
mapper's events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from application.logs import decoder
from domain.billing import CreditAccount
from domain.credits import Cause, account_id_for, to_units
from domain.generation import Generation
from domain.ids import uuid7
from interfaces.bootstrap import Container
from projections import admin, bulk
from projections.runner import ProjectionRunner

pytestmark = pytest.mark.integration

#: Each projection's tables (but ``feed_published``: see test_feed_published_is_the_bulk_end)
#: and the order their rows are compared in.
TABLES = {
    "ledger": {
        "credit_balances": "account_id",
        "credit_holds": "hold_id",
        "ledger_entries": "created_at, id",
    },
    "generations": {"generations": "created_at, id", "feed": "position"},
}


@pytest.fixture
def projection(container: Container) -> Iterator[Callable[..., ProjectionRunner]]:
    """``container.projection``, whose runners' connections are closed after the test."""
    made: list[ProjectionRunner] = []

    def make(name: str, schema: str | None = None) -> ProjectionRunner:
        made.append(container.projection(name, schema=schema))
        return made[-1]

    yield make
    for runner in made:
        runner.view.datastore.close()


def contents(container: Container, name: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    with container.pool.connection() as conn:
        tables = {
            table: conn.execute(f"SELECT * FROM {schema}.{table} ORDER BY {order}").fetchall()
            for table, order in TABLES[name].items()
        }
        row = conn.execute(f"SELECT max(notification_id) FROM {schema}.{name}_tracking").fetchone()
    return {**tables, "tracking": [row]}


# -- the logs: every event kind, each aggregate's events spread over the whole log ----------


def ledger_rounds(user_ids: list[UUID]) -> list[Callable[[CreditAccount, int], None]]:
    """Steps applied to every account in turn, one save per step (so that an account's events
    are spread over the log): every CreditAccount event the ledger handles."""

    def grant(a: CreditAccount, i: int) -> None:
        a.deposit("grant", to_units(100), Cause("signup", f"{a.user_id}:{uuid4()}"))

    def hold_and_capture_part(a: CreditAccount, i: int) -> None:
        hold = a.place_hold(to_units(10), Cause("generation", str(uuid4())))
        a.capture(hold, to_units(4), note="cheaper than quoted")  # captured, the rest released

    def hold_and_release(a: CreditAccount, i: int) -> None:
        hold = a.place_hold(to_units(3), Cause("generation", str(uuid4())))
        a.release(hold, note="failed")

    def run_hold_drawn(a: CreditAccount, i: int) -> None:
        run = Cause("workflow_run", str(uuid4()))
        hold = a.place_hold(to_units(9), run)
        a.draw(hold, to_units(2), Cause("workflow_node", f"{run.id}/n1"))
        if i % 2:
            a.capture(hold, to_units(1))

    def spend_then_claw_back(a: CreditAccount, i: int) -> None:
        a.spend(to_units(5), Cause("install", str(uuid4())), {"listing": "l"})
        # more than is available: the rest is owed (a hold left open above keeps some held)
        a.claw_back(to_units(a.available // 10_000 + 7), Cause("install", str(uuid4())))

    def earning_settles_debt(a: CreditAccount, i: int) -> None:
        a.deposit("earning", to_units(3), Cause("install", str(uuid4())))  # part of the debt
        a.deposit("earning", to_units(50), Cause("install", str(uuid4())))  # the rest
        a.place_hold(to_units(1), Cause("generation", str(uuid4())))  # left open

    return [
        grant,
        hold_and_capture_part,
        hold_and_release,
        run_hold_drawn,
        spend_then_claw_back,
        earning_settles_debt,
    ]


def seed_ledger(container: Container, user_ids: list[UUID], *, new: bool) -> None:
    billing = container.billing
    if new:
        billing.save(*(CreditAccount.open(u) for u in user_ids))
    for step in ledger_rounds(user_ids):
        accounts = [billing.load(account_id_for(u), CreditAccount) for u in user_ids]
        for i, account in enumerate(accounts):
            step(account, i)
        billing.save(*accounts)


def request(user_id: UUID) -> Generation:
    return Generation.request(
        generation_id=uuid7(),
        user_id=user_id,
        model="flux-schnell",
        provider="replicate",
        prompt="a lighthouse at dusk",
        negative_prompt="fog" if user_id.int % 2 else None,
        params={"seed": 7, "aspect_ratio": "16:9", "nested": {"ids": [str(user_id)], "g": 1.5}},
        output_format="png",
        quote=to_units(2),
        allow_fallback=True,
        fingerprint=f"fp-{user_id}",
        request_hash="h",
    )


def produce(g: Generation) -> None:
    g.submitted("job-1", 1)
    g.produced("results/x.png", 1024, 768, "image/png", 123_456, provider_ms=900)
    g.process(
        [{"kind": "preview", "storage_key": "p.webp", "width": 512, "height": 384}],
        "LEHV6nWB2yk8",
        0.82,
        0.01,
        "clf-1",
    )


#: The lives generations lead, as the steps of each save: every Generation event the
#: projection handles (Requested in the first step).
LIVES: list[list[Callable[[Generation], Any]]] = [
    [  # completed
        lambda g: g.fund(uuid4()),
        lambda g: g.queue(),
        produce,
        lambda g: g.complete(to_units(1)),
        lambda g: g.derived(
            [{"kind": "full", "storage_key": "f.webp", "width": 1024, "height": 768}]
        ),
    ],
    [  # fell back, deferred, blocked before completing, reinstated; then blocked on a rescreen
        lambda g: (g.fund(uuid4()), g.queue()),
        lambda g: g.fall_back(
            "flux-dev", "fal", "outage", params={"seed": 7}, negative_prompt=None, cost=15_000
        ),
        lambda g: g.defer(
            "rate limited",
            now=datetime.now(UTC),
            retry_at=datetime.now(UTC) + timedelta(seconds=30),
            give_up_at=datetime.now(UTC) + timedelta(minutes=10),
        ),
        produce,
        lambda g: g.block("classifier", "nsfw", "clf-1", score=0.97, charge=to_units(1)),
        lambda g: g.reinstate("clf-2", 0.2),
        lambda g: g.block("classifier", "rescreen", "clf-3", score=0.99),
    ],
    [  # cancelled before a provider had it
        lambda g: (g.fund(uuid4()), g.queue()),
        lambda g: g.request_cancel(),
    ],
    [  # cancel requested at the provider, then failed there
        lambda g: (g.fund(uuid4()), g.queue()),
        lambda g: g.submitted("job-9", 1),
        lambda g: g.request_cancel(),
        lambda g: g.fail("provider_error", "it broke"),
    ],
    [  # deferred until woken, still waiting
        lambda g: (g.fund(uuid4()), g.queue()),
        lambda g: g.defer(
            "no slot",
            now=datetime.now(UTC),
            retry_at=None,
            give_up_at=datetime.now(UTC) + timedelta(hours=1),
        ),
    ],
    [],  # only requested
]


def seed_generations(container: Container, count: int) -> None:
    app = container.generations
    users = [uuid4() for _ in range(5)]
    made = [(request(users[i % len(users)]), LIVES[i % len(LIVES)]) for i in range(count)]
    app.save(*(g for g, _ in made))
    for step in range(max(len(life) for life in LIVES)):
        touched = [g for g, life in made if step < len(life)]
        for g, life in made:
            if step < len(life):
                life[step](g)
        app.save(*touched)


def head_of(container: Container, name: str) -> int:
    upstream = {"ledger": container.billing, "generations": container.generations}[name]
    return upstream.recorder.max_notification_id() or 0


def seed(container: Container, name: str, user_ids: list[UUID], *, new: bool = True) -> None:
    if name == "ledger":
        seed_ledger(container, user_ids, new=new)
    else:
        seed_generations(container, len(user_ids))


# -- the tests -------------------------------------------------------------------------------

NAMES = ["ledger", "generations"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("max_rows", [bulk.MAX_ROWS, 3], ids=["in-memory", "spilling"])
def test_a_bulk_build_gives_the_incremental_tables(
    container: Container, projection: Callable[..., ProjectionRunner], name: str, max_rows: int
) -> None:
    seed(container, name, [uuid4() for _ in range(12)])
    head = head_of(container, name)

    incremental = projection(name, schema=f"proj_{name}_incremental")
    incremental.batch_size = 7  # many batches, each loading rows the one before wrote
    assert incremental.catch_up() == head

    built = projection(name, schema=f"proj_{name}_bulk")
    progress: list[int] = []
    # a small page: a segment of the spilling build ends in the middle of many lives
    assert bulk.build(built, head, progress.append, max_rows=max_rows, page=5) == head
    assert progress[-1] == head

    expected = contents(container, name, f"proj_{name}_incremental")
    assert all(expected[table] for table in TABLES[name])  # every table has rows
    assert contents(container, name, f"proj_{name}_bulk") == expected


@pytest.mark.parametrize("name", NAMES)
def test_the_live_runner_continues_after_a_bulk_rebuild(
    container: Container, projection: Callable[..., ProjectionRunner], name: str
) -> None:
    user_ids = [uuid4() for _ in range(6)]
    seed(container, name, user_ids)
    live = projection(name)
    live.catch_up()
    seed(container, name, user_ids, new=False)  # the live tables lag behind these

    position = admin.rebuild(live, projection(name, schema=f"proj_{name}_rebuild"))
    assert position == head_of(container, name)

    seed(container, name, user_ids, new=False)  # after the swap: the live runner's
    assert live.catch_up() == head_of(container, name)
    check = projection(name, schema=f"proj_{name}_check")
    check.catch_up()
    assert contents(container, name, f"proj_{name}") == contents(
        container, name, f"proj_{name}_check"
    )


def test_feed_published_is_the_bulk_end(
    container: Container, projection: Callable[..., ProjectionRunner]
) -> None:
    """A rebuild publishes nothing: its feed is history, and a runner starting on the rebuilt
    tables has nothing of it to send again."""
    seed(container, "generations", [uuid4() for _ in range(4)])
    head = head_of(container, "generations")
    built = projection("generations", schema="proj_generations_bulk")
    bulk.build(built, head)
    with container.pool.connection() as conn:
        row = conn.execute("SELECT position FROM proj_generations_bulk.feed_published").fetchone()
    assert row == (head,)


def test_the_fast_decoder_gives_the_mappers_events(container: Container) -> None:
    seed(container, "ledger", [uuid4() for _ in range(3)])
    seed(container, "generations", [uuid4() for _ in range(len(LIVES))])
    for app in (container.billing, container.generations):
        decode = decoder(app.mapper)
        notifications = app.recorder.select_notifications(1, 10_000)
        kinds = set()
        for n in notifications:
            expected, got = app.mapper.to_domain_event(n), decode(n)
            assert type(got) is type(expected)
            assert vars(got) == vars(expected)
            kinds.add(type(got))
        assert len(kinds) > 8
    # what msgspec cannot read goes through the mapper
    app = container.billing
    stored = next(iter(app.recorder.select_notifications(1, 1)))
    odd = dataclasses.replace(stored, state=stored.state.replace(b"{", b'{"x":1e400,', 1))
    assert vars(decoder(app.mapper)(odd)) == vars(app.mapper.to_domain_event(odd))


def test_every_event_kind_is_seeded(
    container: Container, projection: Callable[..., ProjectionRunner]
) -> None:
    """The logs above hold every event the two projections subscribe to."""
    seed(container, "ledger", [uuid4() for _ in range(2)])
    seed(container, "generations", [uuid4() for _ in range(len(LIVES))])
    for name in NAMES:
        runner = projection(name)
        seen = {n.topic for n in runner.upstream.select_notifications(1, 10_000)}
        assert set(runner.view.topics) <= seen, set(runner.view.topics) - seen
