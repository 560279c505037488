"""The provider_health projection: every call a generation made to a provider, and its outcome.

Computed from the generation events alone, so every API process answers the same (see
``provider_health_queries``). A call is one hand-over of a generation to a provider (with the
adapter's own quick retries inside it); what it came to is read from the event that ends it:

    Produced                        ok (latency: the provider's time, measured by the worker)
    Failed <provider failure kind>  that kind (``deadline_exceeded`` at the provider: timeout;
                                    ``invalid_request``: rejected)
    Blocked by the provider         rejected (its safety filter answered)
    FellBack "<provider>: <kind>"   that kind, on the model it fell back from
    Deferred with a failure         that failure (``circuit open``: no call was made, none counted)

Cancellations, cache hits (never submitted), waits for a slot and the give-up after a deferral
are not calls. A call's latency is known once the provider accepted it (``Submitted``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg import Cursor
from psycopg.rows import DictRow

from application.logs import topic_of
from application.providers import RETRYABLE
from domain.generation import Generation
from projections.base import NotifiedEvent, ProjectionView, timestamped

#: Outcomes that are not the provider's failure: it produced, or it refused the request.
ANSWERED = ("ok", "rejected")
#: What a ``Failed`` code or a fallback's reason may name as the failure of a call.
FAILURES = frozenset(RETRYABLE)
CIRCUIT_OPEN = "circuit open"


def failure_of(text: str | None) -> str | None:
    """The failure kind a fallback's reason (``"<provider>: <kind>"``) or a deferral's failure
    names; ``None`` when no call was made (an open circuit). Anything else: unavailable."""
    if text is None:
        return "unavailable"  # deferred before deferrals recorded their failure
    kind = text.rpartition(": ")[2]
    if kind == CIRCUIT_OPEN:
        return None
    return kind if kind in FAILURES else "unavailable"


class ProviderHealthView(ProjectionView):
    projection_name = "provider_health"
    upstream = "generations"
    topics = tuple(
        topic_of(cls)
        for cls in (
            Generation.Queued,
            Generation.FellBack,
            Generation.Deferred,
            Generation.Submitted,
            Generation.Produced,
            Generation.Failed,
            Generation.Blocked,
            Generation.Cancelled,
        )
    )
    partitioned_tables = ("calls",)

    def project(self, curs: Cursor[DictRow], batch: Sequence[NotifiedEvent]) -> None:
        ending = (
            Generation.FellBack,
            Generation.Deferred,
            Generation.Produced,
            Generation.Failed,
            Generation.Blocked,
        )
        times = [timestamped(i.event).timestamp for i in batch if isinstance(i.event, ending)]
        self.ensure_partitions(curs, "calls", times)
        for item in batch:
            self._project_one(curs, item.notification_id, timestamped(item.event))

    def _project_one(self, curs: Cursor[DictRow], position: int, event: Any) -> None:
        key, at = event.originator_id, event.timestamp
        if isinstance(event, Generation.Queued):
            curs.execute(
                f"INSERT INTO {self.schema}.in_flight (generation_id, provider, model) "
                "VALUES (%s, %s, %s) ON CONFLICT (generation_id) DO NOTHING",
                [key, event.provider, event.model],
            )
        elif isinstance(event, Generation.FellBack):
            self._fell_back(curs, position, event)
        elif isinstance(event, Generation.Deferred):
            self._deferred(curs, position, event)
        elif isinstance(event, Generation.Submitted):
            curs.execute(
                f"UPDATE {self.schema}.in_flight SET submitted_at = %s, attempt = %s "
                "WHERE generation_id = %s",
                [at, event.attempt, key],
            )
        elif isinstance(event, Generation.Produced):
            self._call(
                curs, position, key, at, "ok", None, latency_ms=max(0, event.provider_ms) or None
            )
        elif isinstance(event, Generation.Failed):
            self._failed(curs, position, event)
        elif isinstance(event, Generation.Blocked) and event.layer == "provider":
            self._call(curs, position, key, at, "rejected", event.reason)
        else:  # cancelled, or blocked after it was produced
            self._forget(curs, key)

    def _fell_back(self, curs: Cursor[DictRow], position: int, event: Generation.FellBack) -> None:
        key, at = event.originator_id, event.timestamp
        kind = failure_of(event.reason if ": " in event.reason else None)
        if kind is not None:
            self._call(curs, position, key, at, kind, event.reason, ended=False)
        curs.execute(
            f"UPDATE {self.schema}.in_flight SET provider = %s, model = %s, "
            "submitted_at = NULL, attempt = 0 WHERE generation_id = %s",
            [event.provider, event.to_model, key],
        )

    def _deferred(self, curs: Cursor[DictRow], position: int, event: Generation.Deferred) -> None:
        if event.failure is None and not event.reason.endswith(" is unavailable"):
            return  # waiting for a slot under its user's cap: no call was made
        key, at = event.originator_id, event.timestamp
        kind = failure_of(event.failure)
        if kind is not None:
            message = f"{event.reason} ({event.failure or kind})"
            self._call(curs, position, key, at, kind, message, ended=False)
        curs.execute(
            f"UPDATE {self.schema}.in_flight SET submitted_at = NULL WHERE generation_id = %s",
            [key],
        )

    def _failed(self, curs: Cursor[DictRow], position: int, event: Generation.Failed) -> None:
        key, at = event.originator_id, event.timestamp
        if event.code in FAILURES:
            self._call(curs, position, key, at, event.code, event.message)
        elif event.code == "deadline_exceeded":  # only a call still at the provider
            self._call(curs, position, key, at, "timeout", event.message, submitted=True)
        elif event.code == "invalid_request":
            self._call(curs, position, key, at, "rejected", event.message)
        else:  # no call ended with it (funding refused, gave up waiting, processing failed)
            self._forget(curs, key)

    def _forget(self, curs: Cursor[DictRow], key: Any) -> None:
        curs.execute(f"DELETE FROM {self.schema}.in_flight WHERE generation_id = %s", [key])

    def _call(
        self,
        curs: Cursor[DictRow],
        position: int,
        key: Any,
        at: datetime,
        outcome: str,
        error: str | None,
        *,
        ended: bool = True,
        latency_ms: int | None = None,
        submitted: bool = False,
    ) -> None:
        """Records the outcome of the call the generation is in; ``ended``: the generation
        leaves its provider with it (else it stays, for its next call). ``latency_ms`` given:
        the worker's own measure; else from the call's acceptance, when it was accepted. A
        generation that has no accepted call (a cache hit's ``Produced``) records one only
        if the call is not required to be ``submitted`` and was made."""
        source = (
            f"DELETE FROM {self.schema}.in_flight WHERE generation_id = %(key)s RETURNING *"
            if ended
            else f"SELECT * FROM {self.schema}.in_flight WHERE generation_id = %(key)s"
        )
        made = "submitted_at IS NOT NULL" if outcome == "ok" or submitted else "true"
        curs.execute(
            f"WITH call AS ({source}) "
            f"INSERT INTO {self.schema}.calls (position, created_at, generation_id, provider, "
            "model, outcome, latency_ms, error, attempt) "
            "SELECT %(position)s, %(at)s, %(key)s, provider, model, %(outcome)s, "
            "coalesce(%(latency)s, CASE WHEN submitted_at IS NOT NULL THEN greatest(0, "
            "(extract(epoch FROM %(at)s - submitted_at) * 1000)::integer) END), "
            "left(%(error)s, 1000), greatest(attempt, 1) "
            f"FROM call WHERE {made} ON CONFLICT DO NOTHING",
            {
                "key": key,
                "position": position,
                "at": at,
                "outcome": outcome,
                "latency": latency_ms,
                "error": error,
            },
        )
