"""Following an application's notification log from a tracked position."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    ApplicationRecorder,
    JSONTranscoder,
    Mapper,
    Notification,
    StoredEvent,
    find_id_convertor,
)
from eventsourcing.utils import resolve_topic


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


def decoder(mapper: Mapper[Any]) -> Callable[[StoredEvent], DomainEventProtocol[Any]]:
    """The mapper's ``to_domain_event``, about twice as fast, with the same result.

    The library's JSON transcoder decodes with the standard library and a Python hook on every
    object; this decodes with msgspec, then replaces the transcoder's ``{"_type_", "_data_"}``
    objects (innermost first, as the hook does) through the transcoder's own transcodings, and
    builds the event as the mapper does (originator id and version, upcasting). What this cannot
    decode (msgspec rejects ``NaN`` and numbers out of range; an unknown ``_type_``) goes through
    the mapper, which decodes it or raises its own error; so does every event of a mapper with a
    cipher, a compressor or another transcoder.
    """
    transcoder = mapper.transcoder
    if mapper.cipher or mapper.compressor or not isinstance(transcoder, JSONTranscoder):
        return mapper.to_domain_event
    names = transcoder.names
    decode_json = msgspec.json.Decoder().decode

    def walk(value: Any) -> Any:
        if type(value) is list:
            return [walk(v) if type(v) is dict or type(v) is list else v for v in value]
        for key, v in value.items():
            if type(v) is dict:
                data = v.get("_data_")
                if type(data) is str and len(v) == 2 and "_type_" in v:  # a UUID, a datetime
                    value[key] = names[v["_type_"]].decode(data)
                else:
                    value[key] = walk(v)
            elif type(v) is list:
                value[key] = walk(v)
        if len(value) == 2 and "_type_" in value and "_data_" in value:
            return names[value["_type_"]].decode(value["_data_"])
        return value

    def to_domain_event(stored: StoredEvent) -> DomainEventProtocol[Any]:
        try:
            state = walk(decode_json(stored.state))
        except (msgspec.DecodeError, LookupError, ValueError, TypeError):
            return mapper.to_domain_event(stored)  # which decodes it, or says why it cannot
        cls = resolve_topic(stored.topic)
        convert = find_id_convertor(cls, cast("Hashable", type(stored.originator_id)))
        state["originator_id"] = convert(stored.originator_id)
        state["originator_version"] = stored.originator_version
        class_version = getattr(cls, "class_version", 1)
        from_version = state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        event: DomainEventProtocol[Any] = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return event

    return to_domain_event
