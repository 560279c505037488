"""Billing audit for disputes: everything from the event store, the authority."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from uuid import UUID

from application.billing import AccountNotFound
from application.workflows import RunNotFound
from domain.credits import format_credits, to_units
from domain.earnings import EarningItem, EarningsPosition
from domain.ledger import AccountPosition, LedgerEntry
from interfaces.bootstrap import Container
from interfaces.cli.operate import CommandError, container
from projections import ledger_queries, marketplace_queries


def _user(value: str, what: str = "user") -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a {what} id (a UUID)") from None


def _instant(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not an RFC 3339 timestamp") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _entry(e: LedgerEntry) -> dict[str, object]:
    return {
        "id": str(e.id),
        "at": e.at.isoformat(),
        "kind": e.kind,
        "amount": format_credits(e.amount),
        "balance_after": format_credits(e.balance_after),
        "available_after": format_credits(e.available_after),
        "cause": {"type": e.cause.type, "id": e.cause.id},
        "hold_id": str(e.hold_id) if e.hold_id else None,
        "version": e.version,
        "note": e.note,
    }


def _position(p: AccountPosition) -> dict[str, object]:
    return {
        "balance": format_credits(p.balance),
        "held": format_credits(p.held),
        "available": format_credits(p.available),
        "version": p.version,
        "holds": [
            {
                "id": str(h.id),
                "amount": format_credits(h.amount),
                "placed_at": h.placed_at.isoformat(),
                "cause": {"type": h.cause.type, "id": h.cause.id},
            }
            for h in p.holds.values()
        ],
    }


def ledger(args: argparse.Namespace) -> int:
    user_id, at = _user(args.user_id), _instant(args.at)
    try:
        position, entries = container().billing.history(user_id, at)
    except AccountNotFound as missing:
        raise CommandError(str(missing)) from None
    report = {
        "user_id": str(user_id),
        "at": (at or datetime.now(UTC)).isoformat(),
        "position": _position(position),
        "timeline": [_entry(e) for e in entries],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"credit account of user {user_id}, as of {report['at']}")
    print(f"{'at':<33} {'kind':<8} {'amount':>14} {'balance':>14} {'available':>14}  cause")
    for e in entries:
        print(
            f"{e.at.isoformat():<33} {e.kind:<8} {format_credits(e.amount):>14} "
            f"{format_credits(e.balance_after):>14} {format_credits(e.available_after):>14}  "
            f"{e.cause}" + (f"  ({e.note})" if e.note else "")
        )
    print(
        f"balance {format_credits(position.balance)}, held {format_credits(position.held)}, "
        f"available {format_credits(position.available)}"
    )
    for hold in position.holds.values():
        print(
            f"  open hold {hold.id}: {format_credits(hold.amount)} for {hold.cause} "
            f"since {hold.placed_at.isoformat()}"
        )
    return 0


def verify(_: argparse.Namespace) -> int:
    """Replays every account from the event store and compares it with ``credit_balances``."""
    c = container()
    rows = ledger_queries.accounts(c.pool)
    projected = {
        r.user_id: (to_units(r.balance), to_units(r.held), to_units(r.available), to_units(r.owed))
        for r in rows
    }
    versions = {r.user_id: r.version for r in rows}
    differences = behind = checked = 0
    for user_id in c.billing.account_user_ids():
        checked += 1
        latest = c.billing.position(user_id)
        # A projection that lags is not wrong: compare it with the replay up to where it got.
        projected_version = versions.get(user_id)
        p = latest
        if projected_version is not None and projected_version < latest.version:
            behind += 1
            p = c.billing.position(user_id, version=projected_version)
        truth = (p.balance, p.held, p.available, p.owed)
        seen = projected.pop(user_id, None)
        if seen != truth:
            differences += 1
            shown = "missing" if seen is None else "/".join(format_credits(v) for v in seen)
            print(
                f"DIFF user {user_id}: event store balance/held/available/owed "
                f"{'/'.join(format_credits(v) for v in truth)}, credit_balances {shown}"
            )
    for user_id in projected:
        differences += 1
        print(f"DIFF user {user_id}: in credit_balances but has no account in the event store")
    lag = f" ({behind} not yet projected to their latest event)" if behind else ""
    print(f"verified {checked} account(s): {differences} difference(s){lag}")
    earnings_differences = verify_earnings(c)
    return 1 if differences or earnings_differences else 0


def _earned(p: EarningsPosition) -> tuple[int, int, int, int, int]:
    return p.earned, p.clawed_back, p.owed, p.installs, p.refunds


def _shown(values: tuple[int, int, int, int, int]) -> str:
    earned, clawed_back, owed, installs, refunds = values
    money = "/".join(format_credits(v) for v in (earned, clawed_back, owed))
    return f"{money} {installs}/{refunds}"


def verify_earnings(c: Container) -> int:
    """Replays the account of every ``earnings`` row up to the version the row reflects (a
    projection that lags is not wrong) and compares; returns the number of differences."""
    differences = 0
    rows = marketplace_queries.earning_accounts(c.pool)
    for row in rows:
        seen = (
            to_units(row.earned),
            to_units(row.clawed_back),
            to_units(row.owed),
            row.installs,
            row.refunds,
        )
        try:
            truth = _earned(c.billing.earnings(row.user_id, version=row.version)[0])
        except AccountNotFound:
            differences += 1
            print(f"DIFF earnings user {row.user_id}: in earnings but has no account")
            continue
        if seen != truth:
            differences += 1
            print(
                f"DIFF earnings user {row.user_id}: event store "
                f"earned/clawed_back/owed installs/refunds {_shown(truth)}, "
                f"earnings {_shown(seen)}"
            )
    print(f"verified {len(rows)} earnings account(s): {differences} difference(s)")
    return differences


def _item(i: EarningItem) -> dict[str, object]:
    return {
        "id": str(i.id),
        "at": i.at.isoformat(),
        "kind": i.kind,
        "amount": format_credits(i.amount),
        "cause": {"type": i.cause.type, "id": i.cause.id},
        "version": i.version,
        "note": i.note,
    }


def earnings(args: argparse.Namespace) -> int:
    """A creator's earnings replayed from the event store: each sale's earning, each refund's
    clawback (and what it left owed), each debt settled from a later earning."""
    user_id, at = _user(args.user_id), _instant(args.at)
    try:
        position, items = container().billing.earnings(user_id, at)
    except AccountNotFound as missing:
        raise CommandError(str(missing)) from None
    report = {
        "user_id": str(user_id),
        "at": (at or datetime.now(UTC)).isoformat(),
        "total": format_credits(position.total),
        "earned": format_credits(position.earned),
        "clawed_back": format_credits(position.clawed_back),
        "owed": format_credits(position.owed),
        "installs": position.installs,
        "refunds": position.refunds,
        "items": [_item(i) for i in items],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"earnings of user {user_id}, as of {report['at']}")
    print(f"{'at':<33} {'kind':<9} {'amount':>14}  cause")
    for i in items:
        print(
            f"{i.at.isoformat():<33} {i.kind:<9} {format_credits(i.amount):>14}  {i.cause}"
            + (f"  ({i.note})" if i.note else "")
        )
    print(
        f"earned {report['earned']} from {position.installs} sale(s), clawed back "
        f"{report['clawed_back']} for {position.refunds} refund(s), owed {report['owed']}: "
        f"total {report['total']}"
    )
    return 0


def workflow_run(args: argparse.Namespace) -> int:
    """A run's charges node by node, from both event stores: what each node was quoted and
    charged (the run's events) beside the ledger entries its settlements made (the account's
    events); exits non-zero if they disagree."""
    c = container()
    try:
        run = c.workflows.run(None, _user(args.run_id, "workflow run"))
    except RunNotFound as missing:
        raise CommandError(str(missing)) from None
    _, entries = c.billing.history(run.user_id)
    mine = [e for e in entries if e.cause.id.split("/")[0].split(":")[0] == str(run.id)]
    drawn: dict[str, int] = {}
    for e in mine:
        if e.cause.type == "workflow_node" and e.kind == "capture":
            node = e.cause.id.split("/", 1)[1]
            drawn[node] = drawn.get(node, 0) + e.amount
    nodes = []
    for spec in run.graph["nodes"]:
        state = run.nodes[spec["id"]]
        charged = state["charged"] if state["status"] == "completed" else 0
        nodes.append(
            {
                "node": spec["id"],
                "op": spec["op"],
                "status": state["status"],
                "attempts": state["attempts"],
                "generation_id": str(state["generation_id"]) if state["generation_id"] else None,
                "quoted": format_credits(run.quotes.get(spec["id"], 0)),
                "charged": format_credits(charged),
                "in_ledger": format_credits(drawn.get(spec["id"], 0)),
                "reused_from": state.get("reused_from"),
            }
        )
    agrees = all(n["charged"] == n["in_ledger"] for n in nodes) or not run.finished
    report = {
        "run_id": str(run.id),
        "user_id": str(run.user_id),
        "status": run.status,
        "nodes": nodes,
        "ledger": [_entry(e) for e in mine],
        "agrees": agrees,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if agrees else 1
    print(f"workflow run {run.id} of user {run.user_id}: {run.status}")
    print(
        f"{'node':<20} {'op':<18} {'status':<10} {'tries':>5} {'quoted':>10} {'charged':>10} "
        f"{'ledger':>10}  generation"
    )
    for n in nodes:
        print(
            f"{n['node']:<20} {n['op']:<18} {n['status']:<10} {n['attempts']:>5} "
            f"{n['quoted']:>10} {n['charged']:>10} {n['in_ledger']:>10}  {n['generation_id'] or ''}"
        )
    for e in mine:
        print(f"  {e.at.isoformat()}  {e.kind:<8} {format_credits(e.amount):>10}  {e.cause}")
    print("charges agree with the ledger" if agrees else "DIFF: charges and ledger disagree")
    return 0 if agrees else 1
