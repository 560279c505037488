"""The generation context's aggregate: one request for an image or a video, from ask to result.

    requested ─▶ funded ─▶ queued ─▶ running ─▶ processing ─▶ completed
        │           │       ▲  │        │ │           └──────▶ blocked (moderation)
        │           │  deferred│        │ └─▶ cancelling ─▶ cancelled (the provider confirmed)
        │           │          │        │          └──────▶ processing (it finished first)
        └───────────┴──────────┴────────┴──▶ failed | cancelled

Exactly one billable outcome: ``Completed`` names what is charged (never above the quote);
``Failed`` and ``Cancelled`` charge nothing. The provider's job id is recorded before anyone
waits on it, so a worker that dies mid-call is resumed without submitting twice.

Nothing waits for ever: a deferred generation (its provider down, or its user at the cap of
generations at the provider) gives up at ``give_up_at``, and any other unfinished one once it
has been in its status longer than its model allows (:meth:`Generation.expire`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal, get_args
from uuid import UUID

from eventsourcing.domain import Aggregate

from domain.credits import Cause
from domain.errors import Conflict, DomainError

Status = Literal[
    "requested",
    "funded",
    "queued",
    "running",
    "processing",
    "cancelling",
    "completed",
    "failed",
    "cancelled",
    "blocked",
]
STATUSES: tuple[Status, ...] = get_args(Status)
#: The statuses a generation never leaves (but for a rescreen's blocked <-> completed).
TERMINAL: frozenset[Status] = frozenset({"completed", "failed", "cancelled", "blocked"})
#: Before any provider has the request: cancelling needs nobody's agreement.
NOT_SUBMITTED: frozenset[Status] = frozenset({"requested", "funded", "queued"})


class GenerationFinished(DomainError, Conflict):
    """A change asked of a generation that has already ended (HTTP 409)."""


class Generation(Aggregate):
    snapshot_every: ClassVar[int] = 50
    #: Defaults for snapshots taken before these attributes existed.
    processed: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    _cause: dict[str, str] | None = None
    #: When it entered its status (or was last handed to a provider); ``None``: when requested.
    _since: datetime | None = None
    #: A deferred generation's next attempt (``None``: when woken) and when it gives up.
    retry_at: datetime | None = None
    give_up_at: datetime | None = None
    deferrals: int = 0
    #: The request as the last fallback recorded it for its model (see ``FellBack``).
    switched: dict[str, Any] | None = None
    #: Its image inputs as resolved when it was requested (see ``Requested.inputs``).
    inputs: dict[str, dict[str, Any]] | None = None
    #: Whether the derivatives made after it was shown are recorded (see ``Derived``).
    derivatives_made: bool = False

    def __deepcopy__(self, memo: dict[int, Any]) -> Generation:
        """What the aggregate cache hands out for each load: a copy of the attributes, not of
        the values. Events only ever *replace* an attribute's value (no ``apply`` changes a
        dict or list in place; ``tests/unit/test_generation_copy.py`` holds them to it), so a
        change to the copy never reaches the cached aggregate, at ~2 µs instead of ~56."""
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__)
        copied.__dict__["_pending_events"] = list(self._pending_events)
        return copied

    class Requested(Aggregate.Created):
        user_id: UUID
        model: str
        provider: str
        prompt: str
        negative_prompt: str | None
        params: dict[str, Any]
        output_format: str
        quote: int
        allow_fallback: bool
        fingerprint: str
        request_hash: str
        #: What the generation is for, ``{"type", "id"}``: a workflow node, a batch item...
        #: ``None`` (and events stored before it existed): the generation is its own cause.
        cause: dict[str, str] | None = None
        #: Image inputs by parameter (``image``, ``mask``), resolved once: ``{"reference",
        #: "storage_key", "width", "height", "media_type", "sha256"}``. ``None``: it has none.
        inputs: dict[str, dict[str, Any]] | None = None

    class Funded(Aggregate.Event):
        hold_id: UUID

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate.hold_id = "funded", self.hold_id
            aggregate._since = self.timestamp

    class Queued(Aggregate.Event):
        model: str
        provider: str

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate.model, aggregate.provider = (
                "queued",
                self.model,
                self.provider,
            )
            aggregate._since = self.timestamp

    class FellBack(Aggregate.Event):
        """Another model takes over, with the request normalised for it (``params``,
        ``negative_prompt``) and what it costs there (``cost``). ``params`` is ``None`` in
        events stored before they were recorded."""

        from_model: str
        to_model: str
        provider: str
        reason: str
        params: dict[str, Any] | None = None
        negative_prompt: str | None = None
        cost: int | None = None

        def apply(self, aggregate: Any) -> None:
            aggregate.fallback_from = aggregate.fallback_from or self.from_model
            aggregate.model, aggregate.provider = self.to_model, self.provider
            aggregate.job_id, aggregate._since = None, self.timestamp
            aggregate.switched = (
                None
                if self.params is None
                else {
                    "params": self.params,
                    "negative_prompt": self.negative_prompt,
                    "cost": self.cost,
                }
            )

    class Deferred(Aggregate.Event):
        """It waits (back in ``queued``): for its provider to recover (``retry_at``: the next
        try), or for a slot under its user's cap (``retry_at`` ``None``: when one frees). The
        first deferral sets ``give_up_at``. Both are ``None`` in events stored before them.
        ``failure``: what its provider's call met (``unavailable``, ``timeout``, or ``circuit
        open``: no call was made); ``None`` for a wait for a slot, and in events before it."""

        reason: str
        retry_at: datetime | None = None
        give_up_at: datetime | None = None
        failure: str | None = None

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate.deferred = "queued", self.reason
            aggregate.retry_at, aggregate.give_up_at = self.retry_at, self.give_up_at
            aggregate.deferrals = aggregate.deferrals + 1
            aggregate._since = self.timestamp

    class Submitted(Aggregate.Event):
        job_id: str | None
        attempt: int

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate.job_id = "running", self.job_id
            aggregate.attempts, aggregate.deferred = self.attempt, None
            aggregate.retry_at, aggregate._since = None, self.timestamp

    class Produced(Aggregate.Event):
        storage_key: str
        width: int
        height: int
        content_type: str
        size_bytes: int
        provider_ms: int

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate._since = "processing", self.timestamp
            aggregate.result = {
                "storage_key": self.storage_key,
                "width": self.width,
                "height": self.height,
                "content_type": self.content_type,
                "bytes": self.size_bytes,
                "provider_ms": self.provider_ms,
            }

    class Processed(Aggregate.Event):
        """The pipeline's artefacts and scores, and the classifier's verdict inputs."""

        artefacts: list[dict[str, Any]]  # kind, storage_key, width, height, format, bytes
        blurhash: str
        quality_score: float
        nsfw_score: float | None
        classifier: str | None  # the version of the classifier that scored it

        def apply(self, aggregate: Any) -> None:
            aggregate.processed = {
                "artefacts": self.artefacts,
                "blurhash": self.blurhash,
                "quality_score": self.quality_score,
                "nsfw_score": self.nsfw_score,
                "classifier": self.classifier,
            }

    class Derived(Aggregate.Event):
        """The derivatives nobody needed to see it (full-size WebP, AVIF, the social card, the
        original re-encoded), made after it was shown: added to the processed artefacts."""

        artefacts: list[dict[str, Any]]

        def apply(self, aggregate: Any) -> None:
            processed = dict(aggregate.processed or {})
            kinds = {a["kind"] for a in self.artefacts}
            kept = [a for a in processed.get("artefacts") or [] if a["kind"] not in kinds]
            processed["artefacts"] = [*kept, *self.artefacts]
            aggregate.processed = processed
            aggregate.derivatives_made = True

    class Blocked(Aggregate.Event):
        """Moderation hid the result: ``layer`` (provider, classifier, rescreen) decided, by the
        rule set or classifier ``version``. ``charged`` follows the blocked-content billing
        ``policy``; ``None`` when billing was already settled (a rescreen after completion)."""

        layer: str
        reason: str
        version: str
        score: float | None
        charged: int | None
        policy: str

        def apply(self, aggregate: Any) -> None:
            aggregate.status = "blocked"
            aggregate.moderation = {
                "layer": self.layer,
                "reason": self.reason,
                "version": self.version,
                "score": self.score,
            }
            if self.charged is not None:
                aggregate.charged = self.charged

    class Reinstated(Aggregate.Event):
        """A rescreen found an image the classifier had blocked acceptable after all."""

        version: str
        score: float

        def apply(self, aggregate: Any) -> None:
            aggregate.status = "completed"
            aggregate.moderation = {
                "layer": "rescreen",
                "version": self.version,
                "score": self.score,
            }

    class Completed(Aggregate.Event):
        charged: int
        from_cache: UUID | None

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate.charged = "completed", self.charged
            aggregate.from_cache = self.from_cache

    class Failed(Aggregate.Event):
        code: str
        message: str

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate.error = (
                "failed",
                {"code": self.code, "message": self.message},
            )

    class CancelRequested(Aggregate.Event):
        """Shown as ``cancelling`` until the provider confirms (or it was not submitted)."""

        def apply(self, aggregate: Any) -> None:
            aggregate.cancel_requested = True
            aggregate.status, aggregate._since = "cancelling", self.timestamp

    class Cancelled(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            aggregate.status = "cancelled"

    def __init__(
        self,
        user_id: UUID,
        model: str,
        provider: str,
        prompt: str,
        negative_prompt: str | None,
        params: dict[str, Any],
        output_format: str,
        quote: int,
        allow_fallback: bool,
        fingerprint: str,
        request_hash: str,
        cause: dict[str, str] | None = None,
        inputs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.user_id, self.model, self.provider = user_id, model, provider
        self.requested_model = model
        self.prompt, self.negative_prompt, self.params = prompt, negative_prompt, params
        self.output_format, self.quote, self.allow_fallback = output_format, quote, allow_fallback
        self.fingerprint, self.request_hash = fingerprint, request_hash
        self._cause = cause
        self.inputs = inputs
        self.status: Status = "requested"
        self.hold_id: UUID | None = None
        self.job_id: str | None = None
        self.attempts = 0
        self.result: dict[str, Any] | None = None
        self.charged: int | None = None
        self.error: dict[str, str] | None = None
        self.fallback_from: str | None = None
        self.from_cache: UUID | None = None
        self.cancel_requested = False
        self.deferred: str | None = None
        self.processed: dict[str, Any] | None = None
        self.moderation: dict[str, Any] | None = None

    @classmethod
    def request(
        cls,
        *,
        generation_id: UUID,
        user_id: UUID,
        model: str,
        provider: str,
        prompt: str,
        negative_prompt: str | None,
        params: dict[str, Any],
        output_format: str,
        quote: int,
        allow_fallback: bool,
        fingerprint: str,
        request_hash: str,
        cause: Cause | None = None,
        inputs: dict[str, dict[str, Any]] | None = None,
        part: Mapping[str, str] | None = None,
    ) -> Generation:
        """``part``: where in its cause it belongs (``{"node", "hold"}`` for a workflow node),
        recorded beside the cause's type and id."""
        return cls._create(
            cls.Requested,
            id=generation_id,
            user_id=user_id,
            model=model,
            provider=provider,
            prompt=prompt,
            negative_prompt=negative_prompt,
            params=params,
            output_format=output_format,
            quote=quote,
            allow_fallback=allow_fallback,
            fingerprint=fingerprint,
            request_hash=request_hash,
            cause={"type": cause.type, "id": cause.id, **(part or {})} if cause else None,
            inputs=inputs,
        )

    @property
    def cause(self) -> Cause:
        """Why this generation runs; its hold and ledger entries carry it."""
        if self._cause is None:
            return Cause("generation", str(self.id))
        return Cause(self._cause["type"], self._cause["id"])

    @property
    def shared_hold(self) -> UUID | None:
        """The hold of a cause that funds many generations (a workflow run's round): placed
        and settled by its cause, drawn on by this generation. ``None``: it holds its own."""
        hold = (self._cause or {}).get("hold")
        return UUID(hold) if hold else None

    @property
    def cause_part(self) -> dict[str, str]:
        """What the cause records beside its type and id (a workflow node's ``node``)."""
        return {k: v for k, v in (self._cause or {}).items() if k not in ("type", "id")}

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def _check_open(self) -> None:
        if self.finished:
            raise GenerationFinished(f"generation {self.id} is already {self.status}")

    # -- the saga's steps ------------------------------------------------------------------

    def fund(self, hold_id: UUID) -> None:
        if self.status == "requested":
            self.trigger_event(self.Funded, hold_id=hold_id)

    def queue(self) -> None:
        if self.status == "funded":
            self.trigger_event(self.Queued, model=self.model, provider=self.provider)

    def serve_from_cache(self, source_id: UUID, result: dict[str, Any], cost: int) -> None:
        """Completes with the stored result of an identical earlier generation."""
        self.produced(
            result["storage_key"],
            result["width"],
            result["height"],
            result["content_type"],
            result["bytes"],
            provider_ms=0,
        )
        processed = result.get("processed")
        if processed:  # the source's derivatives and scores (blobs are never rewritten)
            self.process(
                processed["artefacts"],
                processed["blurhash"],
                processed["quality_score"],
                processed["nsfw_score"],
                processed["classifier"],
            )
        self.complete(cost, from_cache=source_id)

    def fail(self, code: str, message: str) -> None:
        if not self.finished:
            self.trigger_event(self.Failed, code=code, message=message)

    def submitted(self, job_id: str | None, attempt: int) -> None:
        self._check_open()
        self.trigger_event(self.Submitted, job_id=job_id, attempt=attempt)

    def fall_back(
        self,
        to_model: str,
        provider: str,
        reason: str,
        *,
        params: dict[str, Any],
        negative_prompt: str | None,
        cost: int,
    ) -> None:
        """Hands the request, normalised for ``to_model``, to that model at ``cost``."""
        self._check_open()
        self.trigger_event(
            self.FellBack,
            from_model=self.model,
            to_model=to_model,
            provider=provider,
            reason=reason,
            params=params,
            negative_prompt=negative_prompt,
            cost=cost,
        )

    def defer(
        self,
        reason: str,
        *,
        now: datetime,
        retry_at: datetime | None,
        give_up_at: datetime,
        code: str = "provider_unavailable",
        failure: str | None = None,
    ) -> bool:
        """Waits (``retry_at``: when to try again; ``None``: until woken), at most until the
        first deferral's ``give_up_at``; past it, fails with ``code``. A generation being
        cancelled is cancelled instead (no provider has it). ``False`` when it ended.
        ``failure``: what the provider's call met, recorded with the deferral."""
        if self.finished:
            return False
        if self.cancel_requested:
            self.cancel()
            return False
        give_up = self.give_up_at or give_up_at
        if now >= give_up:
            self.fail(code, f"{reason}; gave up waiting at {give_up.isoformat()}")
            return False
        if self.deferred != reason or retry_at is not None or self.status != "queued":
            self.trigger_event(
                self.Deferred,
                reason=reason,
                retry_at=retry_at,
                give_up_at=give_up,
                failure=failure,
            )
        return True

    @property
    def since(self) -> datetime:
        """When it entered its status (or its provider was last changed)."""
        return self._since or self.created_on

    def due(self, allowance: timedelta) -> datetime | None:
        """When it has waited too long: a deferred one at ``give_up_at``, any other unfinished
        one ``allowance`` after :attr:`since`; ``None`` once finished."""
        if self.finished:
            return None
        if self.deferred is not None and self.give_up_at is not None:
            return self.give_up_at
        return self.since + allowance

    def expire(self, now: datetime, allowance: timedelta) -> bool:
        """Ends it if it is past :meth:`due` (a late sweep of a finished one changes nothing):
        cancelled if a cancel was asked, else failed ``deadline_exceeded`` with the reason."""
        due = self.due(allowance)
        if due is None or now < due:
            return False
        if self.cancel_requested and self.status != "processing":
            self.cancel()
        elif self.deferred is not None and self.retry_at is not None:  # its provider was down
            self.fail("provider_unavailable", f"{self.deferred}; gave up at {due.isoformat()}")
        else:
            self.fail(
                "deadline_exceeded",
                f"still {self.status} at its deadline {due.isoformat()} "
                f"({int(allowance.total_seconds())} s after {self.since.isoformat()})",
            )
        return True

    def produced(
        self,
        storage_key: str,
        width: int,
        height: int,
        content_type: str,
        size_bytes: int,
        provider_ms: int,
    ) -> None:
        self._check_open()
        self.trigger_event(
            self.Produced,
            storage_key=storage_key,
            width=width,
            height=height,
            content_type=content_type,
            size_bytes=size_bytes,
            provider_ms=provider_ms,
        )

    def process(
        self,
        artefacts: list[dict[str, Any]],
        blurhash: str,
        quality_score: float,
        nsfw_score: float | None,
        classifier: str | None,
    ) -> None:
        self._check_open()
        if self.status != "processing":
            raise GenerationFinished(f"generation {self.id} has no result to process")
        self.trigger_event(
            self.Processed,
            artefacts=artefacts,
            blurhash=blurhash,
            quality_score=quality_score,
            nsfw_score=nsfw_score,
            classifier=classifier,
        )

    def derived(self, artefacts: list[dict[str, Any]]) -> None:
        """Adds the derivatives made after the result was shown, once (none made is recorded
        too: it tells a waiting stream that this is all); nothing for an unprocessed result."""
        if self.processed is not None and not self.derivatives_made:
            self.trigger_event(self.Derived, artefacts=artefacts)

    def block(
        self,
        layer: str,
        reason: str,
        version: str,
        *,
        score: float | None = None,
        charge: int | None = None,
        policy: str = "waive",
    ) -> None:
        """Hides the result. Before completion ``charge`` (capped at the quote) is what the
        policy bills; after completion (a rescreen) billing stays as it was settled."""
        if self.status == "blocked":
            return
        if self.status in ("failed", "cancelled"):
            raise GenerationFinished(f"generation {self.id} is already {self.status}")
        settled = self.status == "completed"
        self.trigger_event(
            self.Blocked,
            layer=layer,
            reason=reason,
            version=version,
            score=score,
            charged=None if settled else min(charge or 0, self.quote),
            policy=policy,
        )

    def reinstate(self, version: str, score: float) -> None:
        """Lifts a classifier's block (never a provider's: it made no image)."""
        if self.status == "blocked" and self.processed is not None:
            self.trigger_event(self.Reinstated, version=version, score=score)

    def complete(self, cost: int, from_cache: UUID | None = None) -> None:
        """Charges ``cost``, capped at the quote: a user never pays more than was quoted."""
        self._check_open()
        self.trigger_event(self.Completed, charged=min(cost, self.quote), from_cache=from_cache)

    def request_cancel(self) -> bool:
        """Cancels at once what no provider has yet; otherwise records the request, and
        answers ``True``: the provider must be asked (see :meth:`cancel`)."""
        self._check_open()
        if self.status == "processing":  # the provider has delivered (and billed): too late
            raise GenerationFinished(f"generation {self.id} has its result; it is being processed")
        unsubmitted = self.job_id is None and self.status in NOT_SUBMITTED
        if not self.cancel_requested:
            self.trigger_event(self.CancelRequested)
        if unsubmitted:
            self.cancel()
            return False
        return True

    def cancel(self) -> None:
        """Ends it with nothing charged; a produced result is past cancelling (processing
        completes it), and an ended one stays as it ended."""
        if not self.finished and self.status != "processing":
            self.trigger_event(self.Cancelled)


class IdempotencyKey(Aggregate):
    """Which generation a user's ``Idempotency-Key`` made, and from what request.

    Its id derives from (user, key), so two concurrent requests with one key race to create the
    same aggregate and the store lets exactly one win; the generation keeps a time-ordered id.
    """

    #: How long a key answers with its first result; after that it may make a new generation.
    ttl: ClassVar[timedelta] = timedelta(hours=24)

    class Claimed(Aggregate.Created):
        generation_id: UUID
        request_hash: str

    class Reclaimed(Aggregate.Event):
        generation_id: UUID
        request_hash: str

        def apply(self, aggregate: Any) -> None:
            aggregate.generation_id, aggregate.request_hash = self.generation_id, self.request_hash

    def __init__(self, generation_id: UUID, request_hash: str) -> None:
        self.generation_id = generation_id
        self.request_hash = request_hash

    def expired(self, now: datetime) -> bool:
        return now - self.modified_on > self.ttl

    def reclaim(self, generation_id: UUID, request_hash: str) -> None:
        self.trigger_event(self.Reclaimed, generation_id=generation_id, request_hash=request_hash)


#: The events that end a generation (or, a blocked one, end it for now): what settles it.
ENDINGS: tuple[type[Aggregate.Event], ...] = (
    Generation.Completed,
    Generation.Failed,
    Generation.Cancelled,
    Generation.Blocked,
)

#: The status each event leads to; an event absent here leaves the status as it was. (The
#: aggregate's ``apply`` methods say the same; read models use this instead of their own copy.)
STATUS_AFTER: dict[type[Aggregate.Event], Status] = {
    Generation.Requested: "requested",
    Generation.Funded: "funded",
    Generation.Queued: "queued",
    Generation.Deferred: "queued",
    Generation.Submitted: "running",
    Generation.CancelRequested: "cancelling",
    Generation.Produced: "processing",
    Generation.Blocked: "blocked",
    Generation.Reinstated: "completed",
    Generation.Completed: "completed",
    Generation.Failed: "failed",
    Generation.Cancelled: "cancelled",
}
