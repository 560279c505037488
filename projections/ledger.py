"""The ledger projection: ``credit_balances``, ``credit_holds`` and ``ledger_entries``.

Each batch loads the positions of the accounts it touches, folds the events with the same
function the audit tool replays (:func:`domain.ledger.apply`), and writes the rows with set-based
statements. Every write is idempotent (entries by id, balances by version), so a replayed batch
changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        self.ensure_partitions(curs, "ledger_entries", (entry.at for entry in entries))
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

    def _write_entries(
        self,
        curs: Cursor[DictRow],
        entries: list[LedgerEntry],
        positions: dict[UUID, AccountPosition],
    ) -> None:
        self.write_rows(
            curs,
            "ledger_entries",
            {
                "id": ("uuid", [e.id for e in entries]),
                "created_at": ("timestamptz", [e.at for e in entries]),
                "account_id": ("uuid", [e.account_id for e in entries]),
                "user_id": ("uuid", [positions[e.account_id].user_id for e in entries]),
                "kind": ("text", [e.kind for e in entries]),
                "amount": ("numeric", [to_credits(e.amount) for e in entries]),
                "balance_after": ("numeric", [to_credits(e.balance_after) for e in entries]),
                "available_after": ("numeric", [to_credits(e.available_after) for e in entries]),
                "cause_type": ("text", [e.cause.type for e in entries]),
                "cause_id": ("text", [e.cause.id for e in entries]),
                "hold_id": ("uuid", [e.hold_id for e in entries]),
                "version": ("int", [e.version for e in entries]),
                "note": ("text", [e.note for e in entries]),
            },
        )

    def _write_positions(self, curs: Cursor[DictRow], positions: list[AccountPosition]) -> None:
        opened = [p for p in positions if p.user_id is not None]
        if not opened:
            return
        self.write_rows(
            curs,
            "credit_balances",
            {
                "account_id": ("uuid", [p.account_id for p in opened]),
                "user_id": ("uuid", [p.user_id for p in opened]),
                "balance": ("numeric", [to_credits(p.balance) for p in opened]),
                "held": ("numeric", [to_credits(p.held) for p in opened]),
                "available": ("numeric", [to_credits(p.available) for p in opened]),
                "owed": ("numeric", [to_credits(p.owed) for p in opened]),
                "debts": (
                    "jsonb",
                    [Jsonb([[c.type, c.id, n] for c, n in p.debts.items()]) for p in opened],
                ),
                "version": ("int", [p.version for p in opened]),
                "updated_at": ("timestamptz", [p.updated_at for p in opened]),
            },
            key="account_id",
        )
        ids = [p.account_id for p in opened]
        curs.execute(f"DELETE FROM {self.schema}.credit_holds WHERE account_id = ANY(%s)", [ids])
        holds = [(p, h) for p in opened for h in p.holds.values()]
        self.write_rows(
            curs,
            "credit_holds",
            {
                "hold_id": ("uuid", [h.id for _, h in holds]),
                "account_id": ("uuid", [p.account_id for p, _ in holds]),
                "user_id": ("uuid", [p.user_id for p, _ in holds]),
                "amount": ("numeric", [to_credits(h.amount) for _, h in holds]),
                "cause_type": ("text", [h.cause.type for _, h in holds]),
                "cause_id": ("text", [h.cause.id for _, h in holds]),
                "created_at": ("timestamptz", [h.placed_at for _, h in holds]),
            },
        )
