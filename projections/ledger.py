"""The ledger projection: ``credit_balances``, ``credit_holds`` and ``ledger_entries``.

Each batch loads the positions of the accounts it touches, folds the events with the same
function the audit tool replays (:func:`domain.ledger.apply`), and writes the rows with set-based
statements. Every write is idempotent (entries by id, balances by version), so a replayed batch
changes nothing. A rebuild folds the same way in memory and copies the rows
(:mod:`projections.bulk`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
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
from projections.bulk import Row


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
        account_ids = list({item.event.originator_id for item in batch})
        positions = self._load_positions(curs, account_ids)
        entries = self._fold(positions, batch)
        touched = [positions[a] for a in account_ids if a in positions]
        self.ensure_partitions(curs, "ledger_entries", (entry.at for entry in entries))
        self._write_entries(curs, entries, positions)
        self._write_positions(curs, touched)

    def _fold(
        self, positions: dict[UUID, AccountPosition], batch: Sequence[NotifiedEvent]
    ) -> list[LedgerEntry]:
        """Folds the batch into ``positions``; returns the entries it makes."""
        entries: list[LedgerEntry] = []
        for item in batch:
            event = item.event
            account_id = event.originator_id
            position = positions.get(account_id) or AccountPosition(account_id)
            if event.originator_version <= position.version:
                continue  # already projected (a replayed batch)
            positions[account_id], made = apply(position, event)
            entries.extend(made)
        return entries

    # -- building in bulk (a rebuild's fresh tables: see projections.bulk) ------------------

    @property
    def bulk_columns(self) -> Mapping[str, Sequence[str]]:
        return {table: [name for name, _ in columns] for table, columns in _COLUMNS.items()}

    def bulk_load(self, curs: Cursor[DictRow], keys: list[UUID]) -> dict[UUID, Any]:
        return self._load_positions(curs, keys)

    def bulk_fold(self, states: dict[UUID, Any], batch: Sequence[NotifiedEvent]) -> list[Row]:
        return [
            ("ledger_entries", _entry_row(entry, states[entry.account_id].user_id))
            for entry in self._fold(states, batch)
        ]

    def bulk_rows(self, states: Mapping[UUID, Any]) -> Iterator[Row]:
        for position in states.values():
            if position.user_id is not None:
                yield "credit_balances", _balance_row(position)
                for hold in position.holds.values():
                    yield "credit_holds", _hold_row(position, hold)

    def bulk_forget(self, curs: Cursor[DictRow], keys: list[UUID]) -> None:
        for table in ("credit_holds", "credit_balances"):
            curs.execute(f"DELETE FROM {self.schema}.{table} WHERE account_id = ANY(%s)", [keys])

    def bulk_written(self, curs: Cursor[DictRow], position: int) -> None:
        pass

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
        rows = [_entry_row(e, positions[e.account_id].user_id) for e in entries]
        self.write_rows(curs, "ledger_entries", _by_column("ledger_entries", rows))

    def _write_positions(self, curs: Cursor[DictRow], positions: list[AccountPosition]) -> None:
        opened = [p for p in positions if p.user_id is not None]
        if not opened:
            return
        balances = [_balance_row(p) for p in opened]
        self.write_rows(
            curs, "credit_balances", _by_column("credit_balances", balances), key="account_id"
        )
        ids = [p.account_id for p in opened]
        curs.execute(f"DELETE FROM {self.schema}.credit_holds WHERE account_id = ANY(%s)", [ids])
        holds = [_hold_row(p, h) for p in opened for h in p.holds.values()]
        self.write_rows(curs, "credit_holds", _by_column("credit_holds", holds))


# -- the rows: one shape for the live path's statements and for the bulk path's COPY -----------

#: Each table's columns and their PostgreSQL types, in the order of the rows below.
_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "ledger_entries": (
        ("id", "uuid"),
        ("created_at", "timestamptz"),
        ("account_id", "uuid"),
        ("user_id", "uuid"),
        ("kind", "text"),
        ("amount", "numeric"),
        ("balance_after", "numeric"),
        ("available_after", "numeric"),
        ("cause_type", "text"),
        ("cause_id", "text"),
        ("hold_id", "uuid"),
        ("version", "int"),
        ("note", "text"),
    ),
    "credit_balances": (
        ("account_id", "uuid"),
        ("user_id", "uuid"),
        ("balance", "numeric"),
        ("held", "numeric"),
        ("available", "numeric"),
        ("owed", "numeric"),
        ("debts", "jsonb"),
        ("version", "int"),
        ("updated_at", "timestamptz"),
    ),
    "credit_holds": (
        ("hold_id", "uuid"),
        ("account_id", "uuid"),
        ("user_id", "uuid"),
        ("amount", "numeric"),
        ("cause_type", "text"),
        ("cause_id", "text"),
        ("created_at", "timestamptz"),
    ),
}


def _by_column(table: str, rows: list[tuple[Any, ...]]) -> dict[str, tuple[str, Sequence[Any]]]:
    """Rows as :meth:`ProjectionView.write_rows` takes them: ``{column: (type, values)}``."""
    values = list(zip(*rows, strict=True)) or [() for _ in _COLUMNS[table]]
    return {
        name: (kind, column) for (name, kind), column in zip(_COLUMNS[table], values, strict=True)
    }


def _entry_row(e: LedgerEntry, user_id: UUID | None) -> tuple[Any, ...]:
    return (
        e.id,
        e.at,
        e.account_id,
        user_id,
        e.kind,
        to_credits(e.amount),
        to_credits(e.balance_after),
        to_credits(e.available_after),
        e.cause.type,
        e.cause.id,
        e.hold_id,
        e.version,
        e.note,
    )


def _balance_row(p: AccountPosition) -> tuple[Any, ...]:
    return (
        p.account_id,
        p.user_id,
        to_credits(p.balance),
        to_credits(p.held),
        to_credits(p.available),
        to_credits(p.owed),
        Jsonb([[c.type, c.id, n] for c, n in p.debts.items()]),
        p.version,
        p.updated_at,
    )


def _hold_row(p: AccountPosition, h: OpenHoldView) -> tuple[Any, ...]:
    return (
        h.id,
        p.account_id,
        p.user_id,
        to_credits(h.amount),
        h.cause.type,
        h.cause.id,
        h.placed_at,
    )
