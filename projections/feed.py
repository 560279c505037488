"""A projection with a live feed: its read rows and a ``feed`` table of the messages its
subscribers see, written in one transaction, published to Redis after commit.

The feed row's position is the event's notification id (the SSE event id clients resume
from). A runner that stopped between commit and publish sends what it missed when it starts
again: ``feed_published`` records how far publishing got.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from application.live import LiveMessage, LivePublisher
from projections.base import ProjectionView


def message_of(row: dict[str, Any], subject: str) -> LiveMessage:
    """A stored feed row as the live message it was published as (``subject``: the column of
    the id it is about)."""
    return LiveMessage(
        type=row["type"],
        user_id=row["user_id"],
        data=row["data"],
        position=row["position"],
        **{subject: row[subject]},
    )


class FeedView(ProjectionView):
    #: The feed's column naming what each message is about (``generation_id``, ``run_id``).
    feed_subject: ClassVar[str]
    retained_tables = ("feed",)

    def __init__(self, *args: Any, publisher: LivePublisher | None = None, **kwargs: Any) -> None:
        """``publisher``: where committed feed messages go (none while rebuilding)."""
        super().__init__(*args, **kwargs)
        self.publisher = publisher
        self._unpublished: list[LiveMessage] = []
        self._published_to: int | None = None  # recorded in the next batch's transaction

    @property
    def feed_columns(self) -> tuple[str, ...]:
        return ("position", "created_at", "user_id", self.feed_subject, "type", "data")

    def feed_rows(self, feed: list[tuple[datetime, LiveMessage]]) -> list[tuple[Any, ...]]:
        """The feed's rows of these messages (``(created_at, message)``), as ``feed_columns``."""
        subject = self.feed_subject
        return [
            (m.position, at, m.user_id, getattr(m, subject), m.type, Jsonb(m.data))
            for at, m in feed
        ]

    def _write_feed(self, curs: Cursor[DictRow], feed: list[tuple[datetime, LiveMessage]]) -> None:
        if feed:
            curs.executemany(
                f"INSERT INTO {self.schema}.feed ({', '.join(self.feed_columns)}) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                self.feed_rows(feed),
            )
        if self._published_to is not None:
            curs.execute(
                f"UPDATE {self.schema}.feed_published SET position = greatest(position, %s)",
                [self._published_to],
            )
        self._unpublished = [message for _, message in feed]

    def after_commit(self) -> None:
        if self._unpublished:
            if self.publisher is not None:  # a rebuild publishes nothing: it is all history
                self.publisher.publish(self._unpublished)
            self._published_to = self._unpublished[-1].position
        self._unpublished = []

    def bulk_written(self, curs: Cursor[DictRow], position: int) -> None:
        """A bulk build's messages are history: none is published (as none is while
        rebuilding), and a runner starting on these tables has none to send again."""
        curs.execute(f"UPDATE {self.schema}.feed_published SET position = %s", [position])

    def on_start(self, curs: Cursor[DictRow]) -> None:
        """Makes partitions, and publishes what a previous runner committed but did not send."""
        super().on_start(curs)
        tracked = self._max_tracking_id(self.upstream, curs) or 0
        curs.execute(f"SELECT position FROM {self.schema}.feed_published")
        found = curs.fetchone()
        if found is None:
            curs.execute(
                f"INSERT INTO {self.schema}.feed_published (position) VALUES (%s)", [tracked]
            )
            return
        if self.publisher is None or found["position"] >= tracked:
            return
        curs.execute(
            f"SELECT * FROM {self.schema}.feed WHERE position > %s AND position <= %s "
            "AND created_at > now() - interval '1 day' ORDER BY position",
            [found["position"], tracked],
        )
        missed = [message_of(row, self.feed_subject) for row in curs]
        if missed:
            self.publisher.publish(missed)
        curs.execute(f"UPDATE {self.schema}.feed_published SET position = %s", [tracked])
