"""The earnings projection: ``earnings`` (one row per account that has earned) and
``earning_items`` (one per movement, monthly partitions).

Each batch loads the positions of the accounts it touches, folds the events with the same
function the audit tool replays (:func:`domain.earnings.apply`), and writes the rows with
set-based statements. Items are written by id and positions by version, so a replayed batch
changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg import Cursor
from psycopg.rows import DictRow

from application.logs import topic_of
from domain.billing import CreditAccount
from domain.credits import to_credits, to_units
from domain.earnings import EarningItem, EarningsPosition, apply
from projections.base import NotifiedEvent, ProjectionView


class EarningsView(ProjectionView):
    projection_name = "earnings"
    upstream = "billing"
    topics = tuple(
        topic_of(cls)
        for cls in (
            CreditAccount.Opened,
            CreditAccount.Deposited,
            CreditAccount.ClawedBack,
            CreditAccount.DebtSettled,
        )
    )
    partitioned_tables = ("earning_items",)

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        events = [item.event for item in batch]
        self._write_holders(curs, events)
        account_ids = list({event.originator_id for event in events})
        positions = self._load_positions(curs, account_ids)
        items: list[EarningItem] = []
        for event in events:
            account_id = event.originator_id
            position = positions[account_id]
            if event.originator_version <= position.version:
                continue  # already projected (a replayed batch)
            positions[account_id], made = apply(position, event)
            items.extend(made)
        earned = [p for p in positions.values() if p.has_earnings and p.user_id is not None]
        self._write_items(curs, items, positions)
        self._write_positions(curs, earned)

    # -- reading ---------------------------------------------------------------------------

    def _load_positions(
        self, curs: Cursor[DictRow], account_ids: list[UUID]
    ) -> dict[UUID, EarningsPosition]:
        """The stored position of each account, or a fresh one knowing its holder."""
        curs.execute(
            # named columns: ``e.*`` would bring a second, NULL, account_id for a new earner
            "SELECT h.account_id, h.user_id AS holder, e.earned, e.clawed_back, e.owed, "
            "e.installs, e.refunds, e.version, e.updated_at "
            f"FROM {self.schema}.earning_holders h "
            f"LEFT JOIN {self.schema}.earnings e ON e.account_id = h.account_id "
            "WHERE h.account_id = ANY(%s)",
            [account_ids],
        )
        positions = {a: EarningsPosition(a) for a in account_ids}
        for row in curs.fetchall():
            account_id = row["account_id"]
            if row["version"] is None:
                positions[account_id] = EarningsPosition(account_id, user_id=row["holder"])
                continue
            positions[account_id] = EarningsPosition(
                account_id=account_id,
                user_id=row["holder"],
                earned=to_units(row["earned"]),
                clawed_back=to_units(row["clawed_back"]),
                owed=to_units(row["owed"]),
                installs=row["installs"],
                refunds=row["refunds"],
                version=row["version"],
                updated_at=row["updated_at"],
            )
        return positions

    # -- writing ---------------------------------------------------------------------------

    def _write_holders(self, curs: Cursor[DictRow], events: Sequence[Any]) -> None:
        opened = [e for e in events if isinstance(e, CreditAccount.Opened)]
        self.write_rows(
            curs,
            "earning_holders",
            {
                "account_id": ("uuid", [e.originator_id for e in opened]),
                "user_id": ("uuid", [e.user_id for e in opened]),
            },
        )

    def _write_items(
        self,
        curs: Cursor[DictRow],
        items: list[EarningItem],
        positions: dict[UUID, EarningsPosition],
    ) -> None:
        self.ensure_partitions(curs, "earning_items", (i.at for i in items))
        self.write_rows(
            curs,
            "earning_items",
            {
                "id": ("uuid", [i.id for i in items]),
                "created_at": ("timestamptz", [i.at for i in items]),
                "account_id": ("uuid", [i.account_id for i in items]),
                "user_id": ("uuid", [positions[i.account_id].user_id for i in items]),
                "kind": ("text", [i.kind for i in items]),
                "amount": ("numeric", [to_credits(i.amount) for i in items]),
                "cause_type": ("text", [i.cause.type for i in items]),
                "cause_id": ("text", [i.cause.id for i in items]),
                "version": ("int", [i.version for i in items]),
                "note": ("text", [i.note for i in items]),
            },
        )

    def _write_positions(self, curs: Cursor[DictRow], positions: list[EarningsPosition]) -> None:
        self.write_rows(
            curs,
            "earnings",
            {
                "account_id": ("uuid", [p.account_id for p in positions]),
                "user_id": ("uuid", [p.user_id for p in positions]),
                "earned": ("numeric", [to_credits(p.earned) for p in positions]),
                "clawed_back": ("numeric", [to_credits(p.clawed_back) for p in positions]),
                "owed": ("numeric", [to_credits(p.owed) for p in positions]),
                "total": ("numeric", [to_credits(p.total) for p in positions]),
                "installs": ("int", [p.installs for p in positions]),
                "refunds": ("int", [p.refunds for p in positions]),
                "version": ("int", [p.version for p in positions]),
                "updated_at": ("timestamptz", [p.updated_at for p in positions]),
            },
            key="account_id",
        )
