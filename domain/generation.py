"""The generation context's aggregate: one request for an image or a video, from ask to result.

    requested ─▶ funded ─▶ queued ─▶ running ─▶ processing ─▶ completed
        │           │         │          │            └──────▶ blocked (moderation)
        └───────────┴─────────┴──────────┴──▶ failed | cancelled

Exactly one billable outcome: ``Completed`` names what is charged (never above the quote);
``Failed`` and ``Cancelled`` charge nothing. The provider's job id is recorded before anyone
waits on it, so a worker that dies mid-call is resumed without submitting twice.
"""

from __future__ import annotations

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
    #: The request as the last fallback recorded it for its model (see ``FellBack``).
    switched: dict[str, Any] | None = None
    #: Its image inputs as resolved when it was requested (see ``Requested.inputs``).
    inputs: dict[str, dict[str, Any]] | None = None

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

    class Queued(Aggregate.Event):
        model: str
        provider: str

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate.model, aggregate.provider = (
                "queued",
                self.model,
                self.provider,
            )

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
            aggregate.job_id = None
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
        reason: str

        def apply(self, aggregate: Any) -> None:
            aggregate.deferred = self.reason

    class Submitted(Aggregate.Event):
        job_id: str | None
        attempt: int

        def apply(self, aggregate: Any) -> None:
            aggregate.status, aggregate.job_id = "running", self.job_id
            aggregate.attempts, aggregate.deferred = self.attempt, None

    class Produced(Aggregate.Event):
        storage_key: str
        width: int
        height: int
        content_type: str
        size_bytes: int
        provider_ms: int

        def apply(self, aggregate: Any) -> None:
            aggregate.status = "processing"
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
        def apply(self, aggregate: Any) -> None:
            aggregate.cancel_requested = True

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
    ) -> Generation:
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
            cause={"type": cause.type, "id": cause.id} if cause else None,
            inputs=inputs,
        )

    @property
    def cause(self) -> Cause:
        """Why this generation runs; its hold and ledger entries carry it."""
        if self._cause is None:
            return Cause("generation", str(self.id))
        return Cause(self._cause["type"], self._cause["id"])

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

    def defer(self, reason: str) -> None:
        if not self.finished and self.deferred != reason:
            self.trigger_event(self.Deferred, reason=reason)

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
        if not self.cancel_requested:
            self.trigger_event(self.CancelRequested)
        if self.job_id is None and self.status in NOT_SUBMITTED:
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


#: The status each event leads to; an event absent here leaves the status as it was. (The
#: aggregate's ``apply`` methods say the same; read models use this instead of their own copy.)
STATUS_AFTER: dict[type[Aggregate.Event], Status] = {
    Generation.Requested: "requested",
    Generation.Funded: "funded",
    Generation.Queued: "queued",
    Generation.Submitted: "running",
    Generation.Produced: "processing",
    Generation.Blocked: "blocked",
    Generation.Reinstated: "completed",
    Generation.Completed: "completed",
    Generation.Failed: "failed",
    Generation.Cancelled: "cancelled",
}
