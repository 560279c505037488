"""Following an application's notification log from a tracked position."""

from __future__ import annotations

from collections.abc import Sequence

from eventsourcing.persistence import ApplicationRecorder, Notification


def read_after(
    recorder: ApplicationRecorder,
    position: int,
    limit: int,
    topics: Sequence[str] = (),
    until: int | None = None,
) -> tuple[list[Notification], int]:
    """Notifications after ``position``, and the position this read has covered.

    With a topic filter a reader cannot tell from the rows alone how far it has *scanned*.
    Writers to one application's table are serialised by a table lock and commit in id order,
    so once ``max_notification_id()`` reads ``head``, nothing at or below ``head`` can still
    appear: a batch shorter than the limit has covered everything up to ``head``. (Ids have
    gaps — a failed insert still consumes one — so positions are compared, never counted.)
    With ``until``, the read stops there even if the log has moved on.
    """
    head = recorder.max_notification_id() or 0
    if until is not None:
        head = min(head, until)
    if head <= position:
        return [], position
    batch = list(
        recorder.select_notifications(
            position, limit, stop=head, topics=list(topics), inclusive_of_start=False
        )
    )
    if len(batch) == limit:
        return batch, batch[-1].id
    return batch, head


def topic_of(cls: type) -> str:
    """The topic the library stores for an event class."""
    return f"{cls.__module__}:{cls.__qualname__}"
