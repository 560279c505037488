"""The ``pixevo`` command as an operator runs it: a real process on the test database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from application.marketplace import payout_of
from domain.credits import Cause, to_units
from domain.ids import uuid7
from domain.workflow import WorkflowTemplate
from infrastructure.settings import Settings
from interfaces.bootstrap import Container
from tests.support.processes import ROOT, child_env

pytestmark = pytest.mark.integration


def pixevo(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "interfaces.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(settings, PIXEVO_LOG_LEVEL="WARNING", **env),
        check=False,
    )


def test_users_create_prints_exactly_one_json_object(
    settings: Settings, container: Container
) -> None:
    done = pixevo(
        settings, "users", "create", "--email", "op@example.com", "--credits", "2.5", "--admin"
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert set(created) == {"user_id", "api_key"}
    assert done.stdout.count("\n") == 1
    assert container.billing.position(created["user_id"]).balance == to_units("2.5")
    again = pixevo(settings, "users", "create", "--email", "OP@example.com")
    assert again.returncode == 2
    assert "exists" in again.stderr
    assert again.stdout == ""
    bad = pixevo(settings, "users", "create", "--email", "nope", "--credits", "1.00001")
    assert bad.returncode == 2
    assert bad.stdout == ""


def test_audit_ledger_replays_the_timeline_and_any_instant(
    settings: Settings, container: Container
) -> None:
    user = container.users.create("dispute@example.com", credits=10).user_id
    hold = container.billing.place_hold(user, to_units(4), Cause("generation", "g-17"))
    time.sleep(0.01)
    before_capture = datetime.now(UTC)
    time.sleep(0.01)
    container.billing.capture(user, hold, to_units(3))

    done = pixevo(settings, "audit", "ledger", str(user), "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert [e["kind"] for e in report["timeline"]] == ["grant", "hold", "capture", "release"]
    assert report["timeline"][1]["cause"] == {"type": "generation", "id": "g-17"}
    assert report["position"]["balance"] == "7.0000"

    then = pixevo(
        settings, "audit", "ledger", str(user), "--json", "--at", before_capture.isoformat()
    )
    past = json.loads(then.stdout)["position"]
    assert (past["balance"], past["held"], past["available"]) == ("10.0000", "4.0000", "6.0000")
    assert past["holds"][0]["cause"]["id"] == "g-17"

    text = pixevo(settings, "audit", "ledger", str(user))
    assert "capture" in text.stdout
    assert "generation:g-17" in text.stdout
    assert pixevo(settings, "audit", "ledger", "not-a-uuid").returncode == 2


def test_audit_verify_finds_a_tampered_read_table(settings: Settings, container: Container) -> None:
    honest = container.users.create("honest@example.com", credits=5).user_id
    victim = container.users.create("victim@example.com", credits=5).user_id
    container.billing.place_hold(honest, to_units(1), Cause("generation", "g"))
    container.projection("ledger").catch_up()
    clean = pixevo(settings, "audit", "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 difference(s)" in clean.stdout

    with container.pool.connection() as conn:
        conn.execute(
            "UPDATE proj_ledger.credit_balances SET balance = balance + 1, "
            "available = available + 1 WHERE user_id = %s",
            [victim],
        )
    tampered = pixevo(settings, "audit", "verify")
    assert tampered.returncode == 1
    assert f"DIFF user {victim}" in tampered.stdout
    assert str(honest) not in tampered.stdout

    # a projection that merely lags is not reported as wrong
    container.billing.deposit(honest, "grant", to_units(1), Cause("later", "1"))
    lagging = pixevo(settings, "audit", "verify")
    assert f"DIFF user {honest}" not in lagging.stdout


def test_projections_status_rebuild_and_partitions(
    settings: Settings, container: Container
) -> None:
    container.users.create("p@example.com", credits=1)
    status = pixevo(settings, "projections", "status")
    assert status.returncode == 0, status.stderr
    assert "ledger" in status.stdout
    assert "billing" in status.stdout
    rebuilt = pixevo(settings, "projections", "rebuild", "ledger")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "swapped in" in rebuilt.stdout
    assert pixevo(settings, "projections", "rebuild", "nope").returncode == 2
    # the webhooks outbox is delivery state: rebuilding it would send everything again
    refused = pixevo(settings, "projections", "rebuild", "webhook_generations")
    assert refused.returncode == 2, refused.stdout
    assert "send everything again" in refused.stderr
    ensured = pixevo(settings, "partitions", "ensure", "--months-ahead", "6")
    assert ensured.returncode == 0, ensured.stderr
    with container.pool.connection() as conn:
        parts = conn.execute(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'proj_ledger' AND c.relname = 'ledger_entries'"
        ).fetchone()
    assert parts is not None
    assert parts[0] == 8  # last month, this month, six ahead


def test_partitions_ensure_drops_the_feeds_old_months_and_nothing_else(
    settings: Settings, container: Container
) -> None:
    """Past the retention, a live feed's old months go; the read models' stay."""

    def months(schema: str, table: str) -> set[str]:
        with container.pool.connection() as conn:
            rows = conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n "
                "ON n.oid = p.relnamespace WHERE n.nspname = %s AND p.relname = %s",
                [schema, table],
            ).fetchall()
        return {r[0].rsplit("_", 1)[1] for r in rows}

    old = datetime(2024, 1, 15, tzinfo=UTC)
    with container.pool.connection() as conn:
        tables = ("proj_generations.feed", "proj_generations.generations", "proj_workflows.feed")
        for table in tables:
            conn.execute("SELECT public.pixevo_ensure_partition(%s::regclass, %s)", [table, old])
    this_month = f"{datetime.now(UTC):%Y%m}"
    assert {"202401", this_month} <= months("proj_generations", "feed")
    ensured = pixevo(settings, "partitions", "ensure", PIXEVO_FEED_RETENTION_DAYS="7")
    assert ensured.returncode == 0, ensured.stderr
    assert "generations.feed: 1 partition(s) ended before" in ensured.stdout
    assert "202401" not in months("proj_generations", "feed")
    assert "202401" not in months("proj_workflows", "feed")
    assert this_month in months("proj_generations", "feed")  # still filling: kept
    assert "202401" in months("proj_generations", "generations")  # a read model: kept


def test_audit_earnings_and_verify_finds_a_tampered_earnings_row(
    settings: Settings, container: Container
) -> None:
    creator = container.users.create("creator@example.com").user_id
    buyer = container.users.create("buyer@example.com", credits=50).user_id
    wf = WorkflowTemplate.create(uuid7(), creator, "wf", "to sell")
    wf.add_version({"inputs": {}, "nodes": [{"id": "g", "op": "generate"}], "outputs": {}})
    container.workflows.save(wf)
    listing = container.marketplace.create_listing(creator, wf.id, 1, "T", "D", to_units(10))
    made, _ = container.marketplace.install(buyer, listing["id"])
    container.billing.pay_out([payout_of(container.marketplace.installed(made["install_id"]))])
    container.marketplace.refund(uuid7(), made["install_id"], "broken")
    container.projection("ledger").catch_up()
    container.projection("earnings").catch_up()

    done = pixevo(settings, "audit", "earnings", str(creator), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [i["kind"] for i in report["items"]] == ["earning", "clawback"]
    assert (report["earned"], report["clawed_back"], report["total"]) == (
        "8.0000",
        "8.0000",
        "0.0000",
    )
    assert (report["installs"], report["refunds"]) == (1, 1)
    assert report["items"][1]["cause"] == {"type": "install", "id": str(made["install_id"])}
    assert "marketplace sale" in pixevo(settings, "audit", "earnings", str(creator)).stdout

    clean = pixevo(settings, "audit", "verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "verified 2 earnings account(s): 0 difference(s)" in clean.stdout
    with container.pool.connection() as conn:
        conn.execute(
            "UPDATE proj_earnings.earnings SET earned = earned + 1, total = total + 1 "
            "WHERE user_id = %s",
            [creator],
        )
    tampered = pixevo(settings, "audit", "verify")
    assert tampered.returncode == 1
    assert f"DIFF earnings user {creator}" in tampered.stdout
    assert "1 difference(s)" in tampered.stdout
