"""The eventsourcing library's own recorder and tracking test cases, run against our subclasses.

``EventStoreRecorder`` runs in both tracking layouts: single-row (the library's contract,
every case applies) and multi-row, the layout our reactions use because parallel workers may
process a log out of order. There, a lower notification id recorded after a higher one is
*accepted* (it is a different event), which the last test states explicitly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import eventsourcing.tests.persistence as suites
import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresDatastore
from psycopg import sql

from infrastructure.postgres import EventStoreRecorder, datastore
from projections.ledger import LedgerView

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_schema(request: pytest.FixtureRequest, database_url: str) -> Iterator[None]:
    """Gives a unittest-style test case a fresh schema in this test's own database."""
    schema = f"suite_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    case = request.instance
    case.database_url, case.schema = database_url, schema
    case.stores = []
    yield
    for store in case.stores:
        store.close()


@pytest.mark.usefixtures("scratch_schema")
class WithDatastore:
    database_url: str
    schema: str
    stores: list[PostgresDatastore]
    single_row_tracking: ClassVar[bool] = True

    def datastore(self) -> PostgresDatastore:
        store = datastore(
            self.database_url,
            self.schema,
            pool_size=4,
            max_overflow=8,
            single_row_tracking=self.single_row_tracking,
        )
        self.stores.append(store)
        return store

    def create_recorder(self) -> Any:
        recorder = EventStoreRecorder(
            self.datastore(),
            events_table_name="stored_events",
            tracking_table_name="notification_tracking",
        )
        recorder.create_table()
        return recorder


class TestEventStoreAsApplicationRecorder(WithDatastore, suites.ApplicationRecorderTestCase):
    def test_insert_subscribe(self) -> None:
        super().optional_test_insert_subscribe()


class TestEventStoreAsProcessRecorder(WithDatastore, suites.ProcessRecorderTestCase):
    pass


class TestEventStoreIdsDoNotInterleave(
    WithDatastore, suites.NonInterleavingNotificationIDsBaseCase
):
    insert_num = 300


class TestEventStoreAsTrackingRecorder(WithDatastore, suites.TrackingRecorderTestCase):
    pass


class TestMultiRowEventStoreAsProcessRecorder(WithDatastore, suites.ProcessRecorderTestCase):
    single_row_tracking = False

    def test_raises_when_lower_inserted_later(self) -> None:
        recorder = self.create_recorder()
        recorder.insert_events([], tracking=Tracking("upstream", 2))
        recorder.insert_events([], tracking=Tracking("upstream", 1))  # out of order: accepted
        assert recorder.has_processed("upstream", 1)
        assert recorder.has_processed("upstream", 2)
        assert not recorder.has_processed("upstream", 3)
        with pytest.raises(IntegrityError):  # the same one twice: refused
            recorder.insert_events([], tracking=Tracking("upstream", 1))


class TestLedgerViewAsTrackingRecorder(WithDatastore, suites.TrackingRecorderTestCase):
    def create_recorder(self) -> Any:
        view = LedgerView(self.datastore())
        view.create_table()
        return view
