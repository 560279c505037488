"""The marketplace projection: ``listings`` (the catalogue) and ``installs`` (monthly partitions).

Each batch loads the rows of the listings and installs it touches, folds its events into them
in order (skipping any event a row already has: each row keeps its aggregate's last version),
and writes them back with set-based statements that never let an older version overwrite a
newer one. A listing's ``installs`` count moves by the installs whose status the batch changed
(made, refunded), so a replayed batch, which changes none, counts nothing twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg import Cursor
from psycopg.rows import DictRow

from application.logs import topic_of
from domain.credits import to_credits
from domain.marketplace import Install, Listing
from projections.base import NotifiedEvent, ProjectionView

LISTING_COLUMNS = (
    "id",
    "creator_id",
    "workflow_id",
    "version",
    "title",
    "description",
    "price",
    "status",
    "created_at",
    "updated_at",
    "event_version",
)
INSTALL_COLUMNS = (
    "install_id",
    "created_at",
    "listing_id",
    "buyer_id",
    "creator_id",
    "workflow_id",
    "version",
    "price",
    "fee",
    "earning",
    "status",
    "refunded_at",
    "updated_at",
    "event_version",
)
_LISTING_TYPES = (
    "uuid",
    "uuid",
    "uuid",
    "int",
    "text",
    "text",
    "numeric",
    "text",
    "timestamptz",
    "timestamptz",
    "int",
)
_INSTALL_TYPES = (
    "uuid",
    "timestamptz",
    "uuid",
    "uuid",
    "uuid",
    "uuid",
    "int",
    "numeric",
    "numeric",
    "numeric",
    "text",
    "timestamptz",
    "timestamptz",
    "int",
)


def fold_listing(row: dict[str, Any] | None, event: Any) -> dict[str, Any] | None:
    """A listing's row after ``event`` (``None``: an event of a listing never created)."""
    if isinstance(event, Listing.Created):
        row = {
            "id": event.originator_id,
            "creator_id": event.creator_id,
            "workflow_id": event.workflow_id,
            "version": event.version,
            "title": event.title,
            "description": event.description,
            "price": to_credits(event.price),
            "status": "listed",
            "created_at": event.timestamp,
        }
    elif row is None:
        return None
    elif isinstance(event, Listing.VersionOffered):
        row = {**row, "version": event.version}
    elif isinstance(event, Listing.Repriced):
        row = {**row, "price": to_credits(event.price)}
    elif isinstance(event, Listing.Described):
        row = {**row, "title": event.title, "description": event.description}
    elif isinstance(event, Listing.Unlisted):
        row = {**row, "status": "unlisted"}
    return {**row, "updated_at": event.timestamp, "event_version": event.originator_version}


def fold_install(row: dict[str, Any] | None, event: Any) -> dict[str, Any] | None:
    """An install's row after ``event`` (``None``: an event of an install never made)."""
    if isinstance(event, Install.Made):
        row = {
            "install_id": event.originator_id,
            "created_at": event.timestamp,
            "listing_id": event.listing_id,
            "buyer_id": event.buyer_id,
            "creator_id": event.creator_id,
            "workflow_id": event.workflow_id,
            "version": event.version,
            "price": to_credits(event.price),
            "fee": to_credits(event.fee),
            "earning": to_credits(event.earning),
            "status": "installed",
            "refunded_at": None,
        }
    elif row is None:
        return None
    elif isinstance(event, Install.Upgraded):
        row = {**row, "version": event.version}
    elif isinstance(event, Install.Refunded):
        row = {**row, "status": "refunded", "refunded_at": event.timestamp}
    return {**row, "updated_at": event.timestamp, "event_version": event.originator_version}


class MarketplaceView(ProjectionView):
    projection_name = "marketplace"
    upstream = "marketplace"
    topics = tuple(
        topic_of(cls)
        for cls in (
            Listing.Created,
            Listing.VersionOffered,
            Listing.Repriced,
            Listing.Described,
            Listing.Unlisted,
            Install.Made,
            Install.Upgraded,
            Install.Refunded,
        )
    )
    partitioned_tables = ("installs",)

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        events = [item.event for item in batch]
        listings = self._fold(
            curs,
            "listings",
            "id",
            [e for e in events if isinstance(e, Listing.Event)],
            fold_listing,
        )
        installs_before = self._load(
            curs,
            "installs",
            "install_id",
            {e.originator_id for e in events if isinstance(e, Install.Event)},
        )
        installs = self._fold_loaded(
            installs_before, [e for e in events if isinstance(e, Install.Event)], fold_install
        )
        self.ensure_partitions(curs, "installs", (row["created_at"] for row in installs.values()))
        self._upsert(curs, "listings", "id", LISTING_COLUMNS, _LISTING_TYPES, listings)
        self._upsert(
            curs, "installs", "install_id, created_at", INSTALL_COLUMNS, _INSTALL_TYPES, installs
        )
        self._count_installs(curs, installs_before, installs)

    # -- folding ---------------------------------------------------------------------------

    def _fold(
        self, curs: Cursor[DictRow], table: str, key: str, events: list[Any], fold: Any
    ) -> dict[UUID, dict[str, Any]]:
        loaded = self._load(curs, table, key, {e.originator_id for e in events})
        return self._fold_loaded(loaded, events, fold)

    def _load(
        self, curs: Cursor[DictRow], table: str, key: str, ids: set[UUID]
    ) -> dict[UUID, dict[str, Any]]:
        if not ids:
            return {}
        curs.execute(f"SELECT * FROM {self.schema}.{table} WHERE {key} = ANY(%s)", [list(ids)])
        return {row[key]: dict(row) for row in curs.fetchall()}

    @staticmethod
    def _fold_loaded(
        loaded: dict[UUID, dict[str, Any]], events: list[Any], fold: Any
    ) -> dict[UUID, dict[str, Any]]:
        """The rows the events changed, as they leave them."""
        rows = dict(loaded)
        changed: dict[UUID, dict[str, Any]] = {}
        for event in events:
            key = event.originator_id
            known = rows.get(key)
            if known is not None and event.originator_version <= known["event_version"]:
                continue  # already projected (a replayed batch)
            after = fold(known, event)
            if after is not None:
                rows[key] = changed[key] = after
        return changed

    # -- writing ---------------------------------------------------------------------------

    def _upsert(
        self,
        curs: Cursor[DictRow],
        table: str,
        key: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: dict[UUID, dict[str, Any]],
    ) -> None:
        values = {
            name: (kind, [row[name] for row in rows.values()])
            for name, kind in zip(columns, types, strict=True)
        }
        self.write_rows(curs, table, values, key=key, newer="event_version")

    def _count_installs(
        self,
        curs: Cursor[DictRow],
        before: dict[UUID, dict[str, Any]],
        after: dict[UUID, dict[str, Any]],
    ) -> None:
        """Moves each listing's count by its installs that became (or stopped being) live."""
        delta: Counter[UUID] = Counter()
        for install_id, row in after.items():
            was = before.get(install_id, {}).get("status") == "installed"
            delta[row["listing_id"]] += (row["status"] == "installed") - was
        moved = {listing: n for listing, n in delta.items() if n}
        if moved:
            curs.execute(
                f"UPDATE {self.schema}.listings AS l SET installs = l.installs + d.n "
                "FROM unnest(%s::uuid[], %s::int[]) AS d(id, n) WHERE l.id = d.id",
                [list(moved), list(moved.values())],
            )
