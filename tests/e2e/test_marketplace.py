"""The marketplace end to end, every process real: list a workflow, install it as other users
(concurrently too), upgrade, refund, and the money to the unit in every ledger."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

from application.logs import topic_of
from domain.billing import CreditAccount
from domain.credits import to_units
from domain.marketplace import PLATFORM_ACCOUNT_HOLDER, Install
from interfaces.bootstrap import REACTIONS, build
from tests.e2e.test_image_inputs import Platform, platform
from tests.e2e.test_workflows import finished
from tests.support.processes import child_env, wait_for

__all__ = ["platform"]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GRAPH_V1: dict[str, Any] = {
    "inputs": {"prompt": {"type": "text", "default": "a red fox in snow"}},
    "nodes": [
        {
            "id": "gen",
            "op": "generate",
            "params": {"model": "sim-instant", "seed": 3, "width": 256, "height": 256},
            "inputs": {"prompt": "$inputs.prompt"},
        },
        {"id": "gray", "op": "grayscale", "inputs": {"image": "$nodes.gen"}},
    ],
    "outputs": {"final": "$nodes.gray"},
}
GRAPH_V2: dict[str, Any] = {
    **GRAPH_V1,
    "nodes": [
        *GRAPH_V1["nodes"],
        {
            "id": "small",
            "op": "resize",
            "params": {"width": 128},
            "inputs": {"image": "$nodes.gray"},
        },
    ],
    "outputs": {"final": "$nodes.small"},
}


def published(
    platform: Platform, headers: dict[str, str], price: str, description: str = ""
) -> dict[str, Any]:
    """A creator's workflow with two versions, listed at version 1."""
    http = platform.http
    made = http.post("/v1/workflows", json={"name": "fox"}, headers=headers)
    assert made.status_code == 201, made.text
    workflow_id = made.json()["id"]
    for graph in (GRAPH_V1, GRAPH_V2):
        added = http.post(
            f"/v1/workflows/{workflow_id}/versions", json={"graph": graph}, headers=headers
        )
        assert added.status_code == 201, added.text
    listed = http.post(
        "/v1/listings",
        json={
            "workflow_id": workflow_id,
            "version": 1,
            "title": "Winter fox",
            "description": description or "a fox portrait in monochrome snow",
            "price_credits": price,
        },
        headers=headers,
    )
    assert listed.status_code == 201, listed.text
    listing = listed.json()
    # readable at once, from the read model or the write side
    shown = http.get(f"/v1/listings/{listing['id']}", headers=headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["status"] == "listed"
    return dict(listing)


def credits(platform: Platform, headers: dict[str, str]) -> dict[str, Decimal]:
    found = platform.http.get("/v1/credits", headers=headers).json()
    return {k: Decimal(found[k]) for k in ("balance", "available", "held", "owed")}


def ledger(platform: Platform, headers: dict[str, str]) -> list[dict[str, Any]]:
    return list(platform.http.get("/v1/credits/ledger", headers=headers).json()["items"])


def entries(platform: Platform, headers: dict[str, str], cause_id: str) -> list[tuple[str, str]]:
    return sorted(
        (e["kind"], e["amount"]) for e in ledger(platform, headers) if e["cause"]["id"] == cause_id
    )


def platform_balance(platform: Platform) -> int:
    try:
        return platform.container.billing.position(PLATFORM_ACCOUNT_HOLDER).balance
    except LookupError:
        return 0


def test_an_install_pays_once_earns_once_and_the_three_entries_sum_to_zero(
    platform: Platform,
) -> None:
    http = platform.http
    creator = platform.user("creator@example.com", "10")
    buyer = platform.user("buyer@example.com", "20")
    listing = published(platform, creator, "3.3333")
    fee_before = platform_balance(platform)

    own = http.post(f"/v1/listings/{listing['id']}/install", headers=creator)
    assert own.status_code == 409, own.text

    installed = http.post(f"/v1/listings/{listing['id']}/install", headers=buyer)
    assert installed.status_code == 201, installed.text
    install = installed.json()
    assert install["price_credits"] == "3.3333" and install["version"] == 1
    again = http.post(f"/v1/listings/{listing['id']}/install", headers=buyer)
    assert again.status_code == 200 and again.json()["install_id"] == install["install_id"]

    # the buyer's own copy is there at once, and runs
    copy = http.get(f"/v1/workflows/{install['workflow_id']}", headers=buyer)
    assert copy.status_code == 200, copy.text
    assert copy.json()["source"]["listing_id"] == listing["id"]
    run = http.post(
        f"/v1/workflows/{install['workflow_id']}/runs", json={"inputs": {}}, headers=buyer
    )
    assert run.status_code == 202, run.text
    assert finished(platform, buyer, run.json()["id"])["status"] == "completed"

    price = to_units("3.3333")
    fee = price * 20 // 100  # 0.20, rounded down to the unit
    earning = price - fee
    cause = install["install_id"]
    assert wait_for(lambda: entries(platform, creator, cause) != [], timeout=20)
    assert entries(platform, buyer, cause) == [("spend", "3.3333")]
    assert entries(platform, creator, cause) == [("earning", f"{Decimal(earning) / 10_000:.4f}")]
    assert platform_balance(platform) - fee_before == fee
    assert -price + earning + fee == 0
    assert credits(platform, creator)["balance"] == Decimal("10") + Decimal(earning) / 10_000

    earnings = http.get("/v1/me/earnings", headers=creator).json()
    assert earnings["installs"] == 1 and earnings["refunds"] == 0
    assert Decimal(earnings["total_credits"]) == Decimal(earning) / 10_000
    assert [i["install_id"] for i in earnings["items"]] == [cause]

    # the listing counts it; search finds it by a word of its description
    def counted() -> bool:
        shown = http.get(f"/v1/listings/{listing['id']}", headers=buyer).json()
        return bool(shown["installs"] == 1)

    assert wait_for(counted, timeout=20)
    found = http.get("/v1/listings", params={"q": "monochrome"}, headers=buyer).json()
    assert listing["id"] in [item["id"] for item in found["items"]]


def test_ten_concurrent_installs_charge_once_and_a_replay_records_nothing_twice(
    platform: Platform,
) -> None:
    http = platform.http
    creator = platform.user("busy-creator@example.com", "1")
    buyer = platform.user("eager-buyer@example.com", "5")
    listing = published(platform, creator, "2")
    url = f"/v1/listings/{listing['id']}/install"
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: http.post(url, headers=buyer), range(10)))
    assert sorted(a.status_code for a in answers) == [200] * 9 + [201], [a.text for a in answers]
    assert len({a.json()["install_id"] for a in answers}) == 1
    cause = answers[0].json()["install_id"]
    assert wait_for(lambda: entries(platform, creator, cause) != [], timeout=20)
    assert entries(platform, buyer, cause) == [("spend", "2.0000")]
    assert credits(platform, buyer)["balance"] == Decimal("3")

    # every install event and payment sent to the workers again: nothing is recorded twice
    replayer = build(platform.container.settings, reactions=REACTIONS, run_migrations=False)
    try:
        sent = 0
        for upstream, topics in (
            ("marketplace", [topic_of(Install.Made)]),
            ("billing", [topic_of(CreditAccount.Spent)]),
        ):
            recorder = replayer.applications[upstream].recorder
            for notification in recorder.select_notifications(1, 10_000, topics=topics):
                for reaction, wanted in replayer.reactor.subscriptions(upstream).items():
                    if notification.topic in wanted:
                        replayer.enqueue_reaction(reaction, upstream, notification.id)
                        sent += 1
        assert sent >= 3
        time.sleep(3)  # the workers have had the messages; nothing must change
    finally:
        replayer.close()
    assert entries(platform, buyer, cause) == [("spend", "2.0000")]
    assert entries(platform, creator, cause) == [("earning", "1.6000")]
    earnings = http.get("/v1/me/earnings", headers=creator).json()
    assert earnings["installs"] == 1


def test_not_enough_credits_is_402_with_nothing_recorded_and_unlisted_is_409(
    platform: Platform,
) -> None:
    http = platform.http
    creator = platform.user("pricey@example.com", "1")
    poor = platform.user("poor@example.com", "1")
    listing = published(platform, creator, "5")
    refused = http.post(f"/v1/listings/{listing['id']}/install", headers=poor)
    assert refused.status_code == 402, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert credits(platform, poor)["balance"] == Decimal("1")
    assert [e["kind"] for e in ledger(platform, poor)] == ["grant"]
    assert http.get("/v1/installs", headers=poor).json()["items"] == []

    unlisted = http.post(f"/v1/listings/{listing['id']}/unlist", headers=creator)
    assert unlisted.status_code == 200 and unlisted.json()["status"] == "unlisted"
    rich = platform.user("rich@example.com", "50")
    closed = http.post(f"/v1/listings/{listing['id']}/install", headers=rich)
    assert closed.status_code == 409, closed.text
    browse = http.get("/v1/listings", params={"q": "monochrome"}, headers=rich).json()
    assert listing["id"] not in [item["id"] for item in browse["items"]]
    # another user cannot change the listing: it is not theirs
    assert http.post(f"/v1/listings/{listing['id']}/unlist", headers=rich).status_code == 404


def test_upgrade_moves_the_copy_to_the_offered_version_for_free(platform: Platform) -> None:
    http = platform.http
    creator = platform.user("versions@example.com", "1")
    buyer = platform.user("follower@example.com", "10")
    listing = published(platform, creator, "1")
    install = http.post(f"/v1/listings/{listing['id']}/install", headers=buyer).json()
    mine = http.get("/v1/installs", headers=buyer).json()["items"]
    assert [(i["install_id"], i["update_available"]) for i in mine] == [
        (install["install_id"], False)
    ]
    # a new price for future installs: the offered version stays 1
    repriced = http.patch(
        f"/v1/listings/{listing['id']}", json={"price_credits": "1.5"}, headers=creator
    )
    assert repriced.status_code == 200, repriced.text
    assert (repriced.json()["price_credits"], repriced.json()["version"]) == ("1.5000", 1)
    offered = http.post(
        f"/v1/listings/{listing['id']}/versions", json={"version": 2}, headers=creator
    )
    assert offered.status_code == 200 and offered.json()["version"] == 2, offered.text
    mine = http.get("/v1/installs", headers=buyer).json()["items"]
    assert mine[0]["update_available"] is True
    balance = credits(platform, buyer)["balance"]
    upgraded = http.post(f"/v1/workflows/{install['workflow_id']}/upgrade", headers=buyer)
    assert upgraded.status_code == 200, upgraded.text
    assert upgraded.json()["source"]["version"] == 2
    version = http.get(f"/v1/workflows/{install['workflow_id']}/versions/2", headers=buyer)
    assert version.status_code == 200, version.text
    assert [n["id"] for n in version.json()["graph"]["nodes"]] == ["gen", "gray", "small"]
    assert credits(platform, buyer)["balance"] == balance  # free
    assert wait_for(
        lambda: not http.get("/v1/installs", headers=buyer).json()["items"][0]["update_available"],
        timeout=20,
    )
    # a workflow that no install made has nothing to upgrade to
    own = http.post(f"/v1/workflows/{listing['workflow_id']}/upgrade", headers=creator)
    assert own.status_code == 409, own.text


def test_refund_claws_back_once_and_a_spent_earning_is_owed_then_settled(
    platform: Platform,
) -> None:
    http = platform.http
    admin_made = platform.container.users.create("ops@example.com", "0", admin=True)
    admin = {"Authorization": f"Bearer {admin_made.api_key}"}
    creator = platform.user("spender@example.com", "0.0001")
    buyer = platform.user("regretful@example.com", "20")
    second_buyer = platform.user("later@example.com", "20")
    listing = published(platform, creator, "10")
    first = http.post(f"/v1/listings/{listing['id']}/install", headers=buyer).json()
    cause = first["install_id"]
    assert wait_for(lambda: credits(platform, creator)["balance"] == Decimal("8.0001"), timeout=20)

    # the creator spends the earning: buys their own pricey tool elsewhere
    other_creator = platform.user("shop@example.com", "1")
    shop = published(platform, other_creator, "7")
    bought = http.post(f"/v1/listings/{shop['id']}/install", headers=creator)
    assert bought.status_code == 201, bought.text
    assert credits(platform, creator)["available"] == Decimal("1.0001")

    refunded = http.post(
        f"/v1/admin/installs/{cause}/refund", json={"reason": "not as described"}, headers=admin
    )
    assert refunded.status_code == 200, refunded.text
    assert refunded.json()["status"] == "refunded"
    twice = http.post(f"/v1/admin/installs/{cause}/refund", json={"reason": "again"}, headers=admin)
    assert twice.status_code == 409, twice.text
    not_admin = http.post(
        f"/v1/admin/installs/{cause}/refund", json={"reason": "me too"}, headers=buyer
    )
    assert not_admin.status_code == 403

    assert credits(platform, buyer)["balance"] == Decimal("20")  # whole again
    owed_now = credits(platform, creator)
    assert owed_now["available"] == 0 and owed_now["owed"] == Decimal("6.9999"), owed_now
    assert entries(platform, buyer, cause) == [("refund", "10.0000"), ("spend", "10.0000")]

    # the next earning settles the debt first
    http.post(f"/v1/listings/{listing['id']}/install", headers=second_buyer)
    assert wait_for(lambda: credits(platform, creator)["owed"] == 0, timeout=20)
    after = credits(platform, creator)
    assert after["available"] == Decimal("8") - Decimal("6.9999")
    # available never went below zero at any entry of the creator's ledger
    assert all(Decimal(e["available_after"]) >= 0 for e in ledger(platform, creator))

    # the dispute tool replays the creator's earnings from the event store
    creator_id = http.get("/v1/me", headers=creator).json()["user_id"]
    audit = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "audit", "earnings", creator_id, "--json"],
        env=child_env(platform.container.settings),
        capture_output=True,
        check=True,
    )
    report = json.loads(audit.stdout)
    assert Decimal(report["owed"]) == 0
    assert report["installs"] == 2 and report["refunds"] == 1
    verify = subprocess.run(
        [sys.executable, "-m", "interfaces.cli", "audit", "verify"],
        env=child_env(platform.container.settings),
        capture_output=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
