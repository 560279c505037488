"""Events stored by an earlier schema version still decode (rows from tests/fixtures).

The fixtures are rows copied from a database the code of that time wrote to: events made through
the applications and aggregates, then ``SELECT originator_id, originator_version, topic, state``
from the context's events table. Never regenerate one from today's code: it is the old schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from domain.billing import CreditAccount
from domain.credits import Cause, to_units
from domain.generation import Generation, IdempotencyKey
from interfaces.bootstrap import Container

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parent.parent / "fixtures" / "billing_events_v1.json"
USER = UUID("6f1d2c3b-4a59-4e68-9d7c-0b1a2c3d4e5f")


def test_v1_rows_decode_replay_and_project(container: Container) -> None:
    rows = json.loads(FIXTURE.read_text())["rows"]
    assert any("reason" not in json.loads(r["state"]) for r in rows if "Deposited" in r["topic"])
    billing = container.billing  # its tables exist once the application is built
    _insert_rows(container, "billing.billing_events", rows)
    account = container.billing.repository.get(UUID(rows[0]["originator_id"]))
    assert isinstance(account, CreditAccount)
    assert (account.balance, account.available) == (to_units("12.5"), to_units("12.5"))
    position, entries = container.billing.history(USER)
    assert [e.kind for e in entries] == ["grant", "hold", "capture", "release", "purchase"]
    deposits = [
        e
        for e in container.billing.events.get(account.id)
        if isinstance(e, CreditAccount.Deposited)
    ]
    assert [d.reason for d in deposits] == ["", ""]  # upcast: v1 had no reason
    # new commands append v2 events after the v1 ones
    billing.deposit(USER, "grant", to_units(1), Cause("admin_grant", "after-upgrade"), "goodwill")
    runner = container.projection("ledger")
    runner.catch_up()
    with container.pool.connection() as conn:
        balance = conn.execute(
            "SELECT balance FROM proj_ledger.credit_balances WHERE user_id = %s", [USER]
        ).fetchone()
    assert balance is not None
    assert to_units(balance[0]) == to_units("13.5")
    assert position.version == 5


GENERATIONS_FIXTURE = Path(__file__).parent.parent / "fixtures" / "generation_events_v1.json"
GENERATION_USER = UUID("0c5e2a71-3b4d-4f6e-8a9b-1c2d3e4f5a60")
HOLD = UUID("9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d")
GENERATION_EVENTS = (
    "Requested",
    "Funded",
    "Queued",
    "FellBack",
    "Deferred",
    "Submitted",
    "Produced",
    "Processed",
    "Blocked",
    "Reinstated",
    "Completed",
    "Failed",
    "CancelRequested",
    "Cancelled",
)


def _insert_rows(container: Container, table: str, rows: list[dict[str, Any]]) -> None:
    with container.pool.connection() as conn:
        for row in rows:
            conn.execute(
                f"INSERT INTO {table} (originator_id, originator_version, topic, state) "
                "VALUES (%s, %s, %s, %s)",
                [
                    row["originator_id"],
                    row["originator_version"],
                    row["topic"],
                    row["state"].encode(),
                ],
            )


def test_generation_rows_of_the_previous_schema_decode_replay_and_project(
    container: Container,
) -> None:
    fixture = json.loads(GENERATIONS_FIXTURE.read_text())
    rows, ids = fixture["rows"], {k: UUID(v) for k, v in fixture["generations"].items()}
    # one row of every event type the context stores
    assert {r["topic"].split(":")[1] for r in rows} == {
        *(f"Generation.{name}" for name in GENERATION_EVENTS),
        "IdempotencyKey.Claimed",
        "IdempotencyKey.Reclaimed",
    }
    generations = container.generations  # its tables exist once the application is built
    _insert_rows(container, "generations.generations_events", rows)
    events = [e for i in ids.values() for e in generations.events.get(i)]
    assert {type(e).__name__ for e in events} == set(GENERATION_EVENTS)

    g1 = generations.load(ids["g1"], Generation)
    assert (g1.user_id, g1.status, g1.version) == (GENERATION_USER, "completed", 11)
    assert (g1.requested_model, g1.model, g1.provider, g1.fallback_from) == (
        "flux-schnell",
        "sdxl-lightning",
        "replicate",
        "flux-schnell",
    )
    assert (g1.prompt, g1.negative_prompt, g1.params, g1.output_format) == (
        "a fox in the snow",
        None,
        {"width": 1024, "height": 1024, "seed": 7},
        "png",
    )
    assert (g1.quote, g1.charged, g1.allow_fallback, g1.hold_id) == (3000, 2500, True, HOLD)
    assert (g1.job_id, g1.attempts, g1.deferred, g1.from_cache) == ("job-abc", 2, None, None)
    assert g1.result == {
        "storage_key": "generations/g1/original.png",
        "width": 1024,
        "height": 1024,
        "content_type": "image/png",
        "bytes": 123456,
        "provider_ms": 850,
    }
    assert g1.processed is not None
    assert (g1.processed["quality_score"], g1.processed["nsfw_score"]) == (0.82, 0.12)
    assert [a["kind"] for a in g1.processed["artefacts"]] == ["thumbnail"]
    assert g1.moderation == {"layer": "rescreen", "version": "nsfw-v3", "score": 0.2}

    g2 = generations.load(ids["g2"], Generation)
    assert (g2.status, g2.cancel_requested, g2.job_id, g2.charged) == (
        "cancelled",
        True,
        "job-def",
        None,
    )
    assert (g2.model, g2.negative_prompt, g2.allow_fallback, g2.output_format) == (
        "flux-dev",
        None,  # flux-dev takes no negative prompt: normalising dropped it
        False,
        "webp",
    )

    g3 = generations.load(ids["g3"], Generation)
    assert (g3.status, g3.error, g3.charged) == (
        "failed",
        {"code": "provider_error", "message": "the provider failed 3 times"},
        None,
    )

    g4 = generations.load(ids["g4"], Generation)
    assert (g4.status, g4.charged, g4.job_id) == ("blocked", 3000, None)
    assert g4.moderation == {
        "layer": "classifier",
        "reason": "nsfw",
        "version": "nsfw-v1",
        "score": 0.97,
    }

    key = generations.load(UUID(rows[1]["originator_id"]), IdempotencyKey)
    assert (key.generation_id, key.request_hash, key.version) == (g3.id, g3.request_hash, 2)

    # a change made today appends after them
    g1.block("rescreen", "nsfw", "nsfw-v4", score=0.95)
    generations.save(g1)
    assert generations.load(ids["g1"], Generation).status == "blocked"
    # and the read side projects them
    runner = container.projection("generations")
    runner.catch_up()
    with container.pool.connection() as conn:
        projected: dict[UUID, str] = dict(
            conn.execute(
                "SELECT id, status FROM proj_generations.generations WHERE user_id = %s",
                [GENERATION_USER],
            ).fetchall()
        )
    assert projected == {
        ids["g1"]: "blocked",  # the rescreen above
        ids["g2"]: "cancelled",
        ids["g3"]: "failed",
        ids["g4"]: "blocked",
    }


def test_a_snapshot_of_an_account_from_before_clawbacks_loads_and_can_claw_back(
    container: Container,
) -> None:
    """A ``CreditAccount`` snapshot taken by the code before spending, clawbacks and debts
    existed (no ``class_version``; none of their fields) is upcast when loaded."""
    billing = container.billing
    billing.deposit(USER, "grant", to_units(3), Cause("admin_grant", "before"))
    account_id = billing.load_account(USER).id
    billing.take_snapshot(account_id)
    with container.pool.connection() as conn:
        (state,) = conn.execute(
            "SELECT state FROM billing.billing_snapshots WHERE originator_id = %s", [account_id]
        ).fetchone() or (None,)
        assert state is not None
        old = json.loads(bytes(state))
        assert old["state"]["class_version"] == 2
        for field in ("spent_causes", "clawback_causes", "debts", "class_version"):
            del old["state"][field]
        conn.execute(
            "UPDATE billing.billing_snapshots SET state = %s WHERE originator_id = %s",
            [json.dumps(old).encode(), account_id],
        )
    billing.repository.cache = None  # read the stored snapshot, not this process's copy
    account = billing.load_account(USER)
    assert (account.balance, account.debts, account.spent_causes) == (to_units(3), {}, {})
    account.claw_back(to_units(5), Cause("install", "old-sale"))
    assert account.owed == to_units(2)
