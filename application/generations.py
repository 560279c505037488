"""The generation context's use cases: quote, request (idempotently), cancel; and the loading
and tracked changes the saga's reactions (:mod:`application.saga`) make with them.

The use cases answer with :class:`GenerationState`, a plain copy of what the write side knows
(a create's answer is readable at once, whatever the read model's lag); aggregates stay inside.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Tracking

from application.base import PixevoApplication, command
from application.catalogue import Catalogue, ModelSpec, UnknownModel, default_catalogue
from application.errors import Conflict, NotFound
from application.group_commit import GroupCommit
from application.inputs import (
    SIZED_BY_INPUT,
    ImageInput,
    InputResolver,
    StoredInputs,
    of_records,
    records,
    references,
)
from application.moderation import ModerationPolicy
from application.normalise import GenerationRequest, InvalidRequest, Normalised, normalise
from application.ports import BlobStore
from application.retry import retry_on_conflict
from domain.credits import Cause
from domain.generation import Generation, IdempotencyKey, Status
from domain.ids import uuid7

_KEY_NAMESPACE = UUID("3f0b8c1e-6d2a-4b7f-9a5e-1c2d3e4f5a6b")


class GenerationNotFound(NotFound, LookupError):
    pass


class IdempotencyConflict(Conflict):
    """The same ``Idempotency-Key`` with a different body (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class GenerationState:
    """A generation as the write side has it now: what a use case answers with."""

    id: UUID
    user_id: UUID
    status: Status
    model: str
    provider: str
    prompt: str
    negative_prompt: str | None
    params: dict[str, Any]
    quote: int
    charged: int | None
    result: dict[str, Any] | None
    processed: dict[str, Any] | None
    error: dict[str, str] | None
    from_cache: UUID | None
    fallback_from: str | None
    created_on: datetime

    @classmethod
    def of(cls, generation: Generation) -> GenerationState:
        return cls(
            id=generation.id,
            user_id=generation.user_id,
            status=generation.status,
            model=generation.model,
            provider=generation.provider,
            prompt=generation.prompt,
            negative_prompt=generation.negative_prompt,
            params=dict(generation.params),
            quote=generation.quote,
            charged=generation.charged,
            result=generation.result,
            processed=generation.processed,
            error=generation.error,
            from_cache=generation.from_cache,
            fallback_from=generation.fallback_from,
            created_on=generation.created_on,
        )


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _request_hash(request: GenerationRequest) -> str:
    """What an ``Idempotency-Key`` is bound to: the request as the client sent it."""
    return _digest(
        [
            request.model,
            request.prompt,
            request.negative_prompt,
            request.params,
            request.allow_fallback,
            request.output_format,
        ]
    )


def _key_id(user_id: UUID, idempotency_key: str) -> UUID:
    return uuid5(_KEY_NAMESPACE, f"{user_id}:{idempotency_key}")


def fingerprint(normalised: Normalised) -> str:
    """Identical normalised requests (any user) share a fingerprint: the cache key. An image
    input counts by its content (its hash), not by the reference that named it."""
    params = {k: v for k, v in normalised.params.items() if k not in normalised.inputs}
    parts: list[Any] = [
        normalised.model,
        normalised.prompt,
        normalised.negative_prompt,
        params,
        normalised.output_format,
    ]
    if normalised.inputs:
        parts.append({name: item.sha256 for name, item in sorted(normalised.inputs.items())})
    return _digest(parts)


class GenerationsApplication(PixevoApplication):
    name = "generations"
    snapshotting_intervals: ClassVar = {Generation: Generation.snapshot_every}

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        catalogue: Catalogue | None = None,
        moderation: ModerationPolicy | None = None,
        blobs: BlobStore | None = None,
        inputs: InputResolver | None = None,
    ) -> None:
        super().__init__(env)
        self.catalogue = catalogue or default_catalogue()
        self.moderation = moderation or ModerationPolicy()
        self.group_commit = GroupCommit(self.save)
        self.inputs = inputs or StoredInputs(self.repository.get, blobs)

    def quote(
        self,
        request: GenerationRequest,
        user_id: UUID | None = None,
        inputs: Mapping[str, ImageInput] | None = None,
    ) -> Normalised:
        """The normalised request and its price; refuses a prompt the moderation rules refuse.
        Image references are resolved as ``user_id``'s (or given, already resolved, as
        ``inputs``: a workflow node's upstream outputs)."""
        try:
            spec = self.catalogue.get(request.model)
        except UnknownModel as unknown:
            raise InvalidRequest("model", str(unknown)) from None
        self.moderation.rules.screen(request.prompt, request.negative_prompt)
        resolved = dict(inputs) if inputs is not None else self._resolve(user_id, request)
        return normalise(spec, request, resolved)

    def _resolve(self, user_id: UUID | None, request: GenerationRequest) -> dict[str, ImageInput]:
        found = references(request.params)
        if not found:
            return {}
        if user_id is None:
            raise InvalidRequest(f"params.{next(iter(found))}", "needs the caller to resolve it")
        return {
            name: self.inputs.resolve(user_id, f"params.{name}", reference)
            for name, reference in found.items()
        }

    @command
    def request(
        self,
        user_id: UUID,
        request: GenerationRequest,
        idempotency_key: str | None = None,
        normalised: Normalised | None = None,
        cause: Cause | None = None,
    ) -> tuple[GenerationState, bool]:
        """The generation this request makes: ``(generation, True)`` when new.

        ``normalised`` is :meth:`quote`'s answer for this request, when the caller has it;
        ``cause`` what the generation is for (by default, itself).
        """
        normalised = normalised or self.quote(request, user_id)
        request_hash = _request_hash(request)
        claim: IdempotencyKey | None = None
        generation_id = uuid7()
        if idempotency_key is not None:
            key_id = _key_id(user_id, idempotency_key)
            try:
                existing = self.load(key_id, IdempotencyKey)
            except AggregateNotFoundError:
                claim = IdempotencyKey._create(
                    IdempotencyKey.Claimed,
                    id=key_id,
                    generation_id=generation_id,
                    request_hash=request_hash,
                )
            else:
                if existing.expired(datetime.now(UTC)):  # an old key makes a new generation
                    existing.reclaim(generation_id, request_hash)
                    claim = existing
                elif existing.request_hash != request_hash:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used with a different request"
                    )
                else:
                    return self.state(user_id, existing.generation_id), False
        generation = self._new(generation_id, user_id, request, normalised, cause)
        # both or neither (a racing duplicate conflicts on the key), batched with concurrent ones
        self.group_commit.save(generation, claim)
        return GenerationState.of(generation), True

    def _new(
        self,
        generation_id: UUID,
        user_id: UUID,
        request: GenerationRequest,
        normalised: Normalised,
        cause: Cause | None,
        part: Mapping[str, str] | None = None,
    ) -> Generation:
        spec = self.catalogue.get(normalised.model)
        return Generation.request(
            generation_id=generation_id,
            user_id=user_id,
            model=spec.key,
            provider=spec.provider,
            prompt=normalised.prompt,
            negative_prompt=normalised.negative_prompt,
            params=normalised.params,
            output_format=normalised.output_format,
            quote=normalised.cost_units,
            allow_fallback=request.allow_fallback,
            fingerprint=fingerprint(normalised),
            request_hash=_request_hash(request),
            cause=cause,
            inputs=records(normalised.inputs),
            part=part,
        )

    def request_part(
        self,
        tracking: Tracking,
        generation_id: UUID,
        user_id: UUID,
        request: GenerationRequest,
        normalised: Normalised,
        cause: Cause,
        part: Mapping[str, str],
    ) -> bool:
        """A reaction: the generation one part of ``cause`` makes (a workflow node's attempt),
        with its id given and recorded with ``tracking``, once."""
        if self.already_processed(tracking):
            return False
        generation = self._new(generation_id, user_id, request, normalised, cause, part)
        return self.save_tracked(tracking, generation)

    def replay(
        self, user_id: UUID, request: GenerationRequest, idempotency_key: str
    ) -> GenerationState | None:
        """The generation an earlier request with this ``Idempotency-Key`` made, if the key is
        still live (``None``: there is none, the request is new). Looked up before anything is
        checked against the credits: a replay answers the first generation even when its hold
        has since taken them. The same key with another request: :class:`IdempotencyConflict`.
        """
        try:
            existing = self.load(_key_id(user_id, idempotency_key), IdempotencyKey)
        except AggregateNotFoundError:
            return None
        if existing.expired(datetime.now(UTC)):
            return None
        if existing.request_hash != _request_hash(request):
            raise IdempotencyConflict("this Idempotency-Key was used with a different request")
        return self.state(user_id, existing.generation_id)

    def sent_request(self, generation: Generation) -> Normalised:
        """What the generation's model now receives, and what it costs there: as recorded when
        it was requested, or by the fallback that chose the model. Nothing is normalised again,
        but for a fallback stored before ``FellBack`` recorded its request."""
        switched = generation.switched
        if generation.fallback_from is not None and switched is None:
            return self.normalised_for(generation, self.catalogue.get(generation.model))
        return Normalised(
            model=generation.model,
            params=dict(switched["params"] if switched else generation.params),
            prompt=generation.prompt,
            negative_prompt=switched["negative_prompt"] if switched else generation.negative_prompt,
            output_format=generation.output_format,
            cost_units=switched["cost"] if switched else generation.quote,
            inputs=of_records(generation.inputs),
        )

    def normalised_for(self, generation: Generation, spec: ModelSpec) -> Normalised:
        """The request as it was first normalised, normalised again for another model ``spec``
        (a fallback): the one rule for moving a request between models."""
        params: dict[str, Any] = dict(generation.params)
        if spec.capabilities.sizes:  # it takes pixels: the ratio only said how they were chosen
            params.pop("aspect_ratio", None)
        if spec.capabilities.aspect_ratios is not None or spec.kind in SIZED_BY_INPUT:
            params.pop("width", None)  # it takes a ratio, or its input's size: pixels conflict
            params.pop("height", None)
        request = GenerationRequest(
            model=spec.key,
            prompt=generation.prompt,
            negative_prompt=generation.negative_prompt,
            params=params,
            allow_fallback=generation.allow_fallback,
            output_format=generation.output_format,
        )
        return normalise(spec, request, of_records(generation.inputs))

    def state(self, user_id: UUID | None, generation_id: UUID) -> GenerationState:
        """The generation as the write side has it, if ``user_id`` (when given) owns it."""
        return GenerationState.of(self.generation(user_id, generation_id))

    def generation(self, user_id: UUID | None, generation_id: UUID) -> Generation:
        """The generation, if ``user_id`` (when given) owns it; else :class:`GenerationNotFound`."""
        try:
            generation = self.load(generation_id, Generation)
        except (AggregateNotFoundError, TypeError):
            raise GenerationNotFound(f"no generation {generation_id}") from None
        if user_id is not None and generation.user_id != user_id:
            raise GenerationNotFound(f"no generation {generation_id}")
        return generation

    def change(self, target: UUID | Generation, change: Callable[[Generation], None]) -> Generation:
        """Applies ``change`` to the generation and saves it; conflicts are retried. Answers the
        generation as saved, for the caller to go on with instead of loading it again.

        ``target``: its id, or the generation as the caller loaded (or was last answered) it:
        the first attempt changes that one; a conflict loads it afresh."""
        loaded = [target] if isinstance(target, Generation) else []
        generation_id = target.id if isinstance(target, Generation) else target

        def record() -> Generation:
            generation = loaded.pop() if loaded else self.generation(None, generation_id)
            change(generation)
            self.save(generation)
            return generation

        return retry_on_conflict(record)()

    def change_tracked(
        self,
        tracking: Tracking,
        target: UUID | Generation,
        change: Callable[[Generation], None],
        *,
        applies: Callable[[Generation], bool] = lambda g: not g.finished,
    ) -> bool:
        """A reaction's effect: ``change`` the generation and record it with ``tracking`` in one
        transaction (only the tracking when the change no longer ``applies``); conflicts are
        retried. ``False`` when the tracked event was handled before.

        ``target`` is the generation's id, or the generation the reaction already loaded (and
        has not changed since): the first attempt then changes that one instead of loading it
        again; a conflict (someone else changed it meanwhile) loads it afresh."""
        loaded = [target] if isinstance(target, Generation) else []
        generation_id = target.id if isinstance(target, Generation) else target

        def record() -> bool:
            generation = loaded.pop() if loaded else self.generation(None, generation_id)
            if not applies(generation):
                return self.save_tracked(tracking)
            change(generation)
            return self.save_tracked(tracking, generation)

        return bool(retry_on_conflict(record)())

    @command
    def cancel(self, user_id: UUID, generation_id: UUID) -> GenerationState:
        """Asks to cancel: the aggregate cancels at once what no provider has yet; otherwise
        ``cancel_at_provider`` asks the provider."""
        generation = self.generation(user_id, generation_id)
        generation.request_cancel()
        self.save(generation)
        return GenerationState.of(generation)
