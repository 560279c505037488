"""The ledger projection: ``credit_balances``, ``credit_holds`` and ``ledger_entries``.

Each batch loads the positions of the accounts it touches, folds the events with the same
function the audit tool replays (:func:`domain.ledger.apply`), and writes the rows with set-based
statements. Every write is idempotent (entries by id, balances by version), so a replayed batch
changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from application.logs import topic_of
from domain.billing import CreditAccount
from domain.credits import Cause, to_credits, to_units
from domain.ledger import AccountPosition, LedgerEntry, OpenHoldView, apply
from projections.base import NotifiedEvent, ProjectionView


class LedgerView(ProjectionView):
    projection_name = "ledger"
    upstream = "billing"
    topics = tuple(
        topic_of(cls)
        for cls in (
            CreditAccount.Opened,
            CreditAccount.Deposited,
            CreditAccount.HoldPlaced,
            CreditAccount.HoldCaptured,
            CreditAccount.HoldDrawn,
            CreditAccount.HoldReleased,
            CreditAccount.Spent,
            CreditAccount.ClawedBack,
            CreditAccount.DebtSettled,
        )
    )
    partitioned_tables = ("ledger_entries",)

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        events = [item.event for item in batch]
        account_ids = list({event.originator_id for event in events})
        positions = self._load_positions(curs, account_ids)
        entries: list[LedgerEntry] = []
        for event in events:
            account_id = event.originator_id
            position = positions.get(account_id) or AccountPosition(account_id)
            if event.originator_version <= position.version:
                continue  # already projected (a replayed batch)
            positions[account_id], made = apply(position, event)
            entries.extend(made)
        touched = [positions[a] for a in account_ids if a in positions]
        self._ensure_partitions(curs, {entry.at for entry in entries})
        self._write_entries(curs, entries, positions)
        self._write_positions(curs, touched)

    # -- reading ---------------------------------------------------------------------------

    def _load_positions(
        self, curs: Cursor[DictRow], account_ids: list[UUID]
    ) -> dict[UUID, AccountPosition]:
        holds: dict[UUID, dict[UUID, OpenHoldView]] = {}
        curs.execute(
            f"SELECT * FROM {self.schema}.credit_holds WHERE account_id = ANY(%s)", [account_ids]
        )
        for row in curs.fetchall():
            holds.setdefault(row["account_id"], {})[row["hold_id"]] = OpenHoldView(
                row["hold_id"],
                to_units(row["amount"]),
                Cause(row["cause_type"], row["cause_id"]),
                row["created_at"],
            )
        curs.execute(
            f"SELECT * FROM {self.schema}.credit_balances WHERE account_id = ANY(%s)",
            [account_ids],
        )
        return {
            row["account_id"]: AccountPosition(
                account_id=row["account_id"],
                user_id=row["user_id"],
                balance=to_units(row["balance"]),
                holds=holds.get(row["account_id"], {}),
                debts={Cause(kind, cause): units for kind, cause, units in row["debts"]},
                version=row["version"],
                updated_at=row["updated_at"],
            )
            for row in curs.fetchall()
        }

    # -- writing ---------------------------------------------------------------------------

    def _ensure_partitions(self, curs: Cursor[DictRow], times: set[datetime]) -> None:
        months = {t.replace(day=1, hour=0, minute=0, second=0, microsecond=0) for t in times}
        for month in months:
            curs.execute(
                "SELECT public.pixevo_ensure_partition(%s::regclass, %s)",
                [f"{self.schema}.ledger_entries", month],
            )

    def _write_entries(
        self,
        curs: Cursor[DictRow],
        entries: list[LedgerEntry],
        positions: dict[UUID, AccountPosition],
    ) -> None:
        if not entries:
            return
        columns: dict[str, list[Any]] = {
            "id": [],
            "created_at": [],
            "account_id": [],
            "user_id": [],
            "kind": [],
            "amount": [],
            "balance_after": [],
            "available_after": [],
            "cause_type": [],
            "cause_id": [],
            "hold_id": [],
            "version": [],
            "note": [],
        }
        for e in entries:
            for name, value in (
                ("id", e.id),
                ("created_at", e.at),
                ("account_id", e.account_id),
                ("user_id", positions[e.account_id].user_id),
                ("kind", e.kind),
                ("amount", to_credits(e.amount)),
                ("balance_after", to_credits(e.balance_after)),
                ("available_after", to_credits(e.available_after)),
                ("cause_type", e.cause.type),
                ("cause_id", e.cause.id),
                ("hold_id", e.hold_id),
                ("version", e.version),
                ("note", e.note),
            ):
                columns[name].append(value)
        curs.execute(
            f"INSERT INTO {self.schema}.ledger_entries "
            f"({', '.join(columns)}) "
            "SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::uuid[], %s::uuid[], "
            "%s::text[], %s::numeric[], %s::numeric[], %s::numeric[], %s::text[], %s::text[], "
            "%s::uuid[], %s::int[], %s::text[]) ON CONFLICT DO NOTHING",
            list(columns.values()),
        )

    def _write_positions(self, curs: Cursor[DictRow], positions: list[AccountPosition]) -> None:
        opened = [p for p in positions if p.user_id is not None]
        if not opened:
            return
        curs.execute(
            f"INSERT INTO {self.schema}.credit_balances AS b "
            "(account_id, user_id, balance, held, available, owed, debts, version, updated_at) "
            "SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::numeric[], %s::numeric[], "
            "%s::numeric[], %s::numeric[], %s::jsonb[], %s::int[], %s::timestamptz[]) "
            "ON CONFLICT (account_id) DO UPDATE SET balance = excluded.balance, "
            "held = excluded.held, available = excluded.available, owed = excluded.owed, "
            "debts = excluded.debts, version = excluded.version, "
            "updated_at = excluded.updated_at WHERE b.version < excluded.version",
            [
                [p.account_id for p in opened],
                [p.user_id for p in opened],
                [to_credits(p.balance) for p in opened],
                [to_credits(p.held) for p in opened],
                [to_credits(p.available) for p in opened],
                [to_credits(p.owed) for p in opened],
                [Jsonb([[c.type, c.id, units] for c, units in p.debts.items()]) for p in opened],
                [p.version for p in opened],
                [p.updated_at for p in opened],
            ],
        )
        ids = [p.account_id for p in opened]
        curs.execute(f"DELETE FROM {self.schema}.credit_holds WHERE account_id = ANY(%s)", [ids])
        holds = [(p, h) for p in opened for h in p.holds.values()]
        if holds:
            curs.execute(
                f"INSERT INTO {self.schema}.credit_holds "
                "(hold_id, account_id, user_id, amount, cause_type, cause_id, created_at) "
                "SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::numeric[], "
                "%s::text[], %s::text[], %s::timestamptz[])",
                [
                    [h.id for _, h in holds],
                    [p.account_id for p, _ in holds],
                    [p.user_id for p, _ in holds],
                    [to_credits(h.amount) for _, h in holds],
                    [h.cause.type for _, h in holds],
                    [h.cause.id for _, h in holds],
                    [h.placed_at for _, h in holds],
                ],
            )
