"""After a provider produced a result: derivatives, scores and the moderation verdict.

    process_result   Produced  -> what showing it needs (preview, thumbnail, blurhash, quality),
                                  the classifier -> Processed, then Completed (visible) or Blocked
    derive_result    Completed -> the derivatives nobody waited for (full-size WebP, AVIF, the
                     Reinstated   social card, the original re-encoded) -> Derived

Moderation gates visibility: the classifier judges the preview before the generation is
completed, and derivatives are made only for a visible result. The artefacts are stored before
anything is recorded (blob keys are the generation's and the artefact's, so a repeated run
overwrites the same files); the events and the tracking record then commit together, so a
redelivered message records nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application import tracing
from application.assets import artefact_key
from application.generations import GenerationsApplication
from application.imaging import (
    DERIVED_KINDS,
    Artefact,
    Classification,
    ClassifierUnavailable,
    ImageClassifier,
    ImagePipeline,
    ProcessingFailed,
)
from application.logs import topic_of
from application.moderation import ModerationPolicy
from application.ports import BlobStore, Deferral
from application.reactions import IMAGES_QUEUE, Reaction
from application.retry import retry_on_conflict
from domain.generation import Generation

#: The artefact the classifier looks at: big enough to judge, small to send.
CLASSIFIED = ("preview", "poster")
CLASSIFIER_RETRY_S = 10.0
#: How long a result waits for the classifier before its generation fails (nothing charged);
#: well inside the broker's retry budget (100 retries), so it never stays ``processing``.
CLASSIFIER_PATIENCE = timedelta(minutes=10)


def _derived_kinds(processed: dict[str, Any]) -> bool:
    """Whether a result has its derivatives: a cached copy of a source that had them does (it
    shares them); one copied before the source's were made gets its own."""
    return any(a["kind"] in DERIVED_KINDS for a in processed.get("artefacts") or [])


def _store(
    blobs: BlobStore, generation_id: UUID, artefacts: Sequence[Artefact]
) -> list[dict[str, Any]]:
    """Stores a generation's artefacts (a repeated run overwrites the same keys) and answers
    what the events record of each."""
    stored = []
    for artefact in artefacts:
        key = artefact_key(generation_id, artefact.kind, artefact.format)
        blobs.put(key, artefact.data, artefact.media_type)
        stored.append(
            {
                "kind": artefact.kind,
                "storage_key": key,
                "width": artefact.width,
                "height": artefact.height,
                "format": artefact.format,
                "media_type": artefact.media_type,
                "bytes": len(artefact.data),
            }
        )
    return stored


@dataclass(frozen=True, slots=True)
class Verdict:
    blocked: bool
    score: float
    version: str
    reason: str


def verdict_of(classification: Classification, policy: ModerationPolicy) -> Verdict:
    score = classification.nsfw_score
    return Verdict(
        blocked=policy.blocks(score),
        score=score,
        version=classification.version,
        reason=f"nsfw score {score:.4f} is at or above the threshold {policy.nsfw_threshold}",
    )


class ProcessResult(Reaction):
    name = "process_result"
    upstream = "generations"
    topics = (topic_of(Generation.Produced),)
    queue = IMAGES_QUEUE  # CPU-bound: its own workers, sized by cores

    def __init__(
        self,
        generations: GenerationsApplication,
        blobs: BlobStore,
        pipeline: ImagePipeline,
        classifier: ImageClassifier,
    ) -> None:
        self.generations, self.blobs = generations, blobs
        self.pipeline, self.classifier = pipeline, classifier

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        generation = self.generations.generation(None, event.originator_id)
        if generation.status != "processing" or self.generations.already_processed(tracking):
            return False  # served from the cache (already complete), or done before
        result = generation.result or {}
        spec = self.generations.catalogue.get(generation.model)
        try:
            with tracing.span("image.pipeline", attributes={"pixevo.kind": spec.kind}):
                processed = self.pipeline.process(
                    self.blobs.get(str(result["storage_key"])), video=spec.kind == "video"
                )
                artefacts = _store(self.blobs, generation.id, processed.artefacts)
            judged = next(a for a in processed.artefacts if a.kind in CLASSIFIED)
            with tracing.span("moderation.classify"):
                classification = self.classifier.classify(judged.data, judged.media_type)
        except ClassifierUnavailable as unavailable:
            if datetime.now(UTC) - generation.modified_on > CLASSIFIER_PATIENCE:
                return self._fail(  # before the broker's retries run out: never stuck
                    tracking, generation.id, f"the classifier was unavailable: {unavailable}"
                )
            raise Deferral(str(unavailable), CLASSIFIER_RETRY_S) from None
        except ProcessingFailed as failed:
            return self._fail(tracking, generation.id, str(failed))
        verdict = verdict_of(classification, self.generations.moderation)

        def judge(current: Generation) -> None:
            current.process(
                artefacts,
                processed.blurhash,
                processed.quality_score,
                verdict.score,
                verdict.version,
            )
            cost = self.generations.sent_request(current).cost_units
            if verdict.blocked:
                policy = self.generations.moderation
                current.block(
                    "classifier",
                    verdict.reason,
                    verdict.version,
                    score=verdict.score,
                    charge=policy.blocked_charge(cost),
                    policy=policy.blocked_billing,
                )
            else:
                current.complete(cost)

        return self.generations.change_tracked(
            tracking, generation, judge, applies=lambda g: g.status == "processing"
        )

    def _fail(self, tracking: Tracking, generation_id: UUID, message: str) -> bool:
        return self.generations.change_tracked(
            tracking, generation_id, lambda g: g.fail("processing_failed", message)
        )


class DeriveResult(Reaction):
    """The rest of a visible result's artefacts, made after it was shown."""

    name = "derive_result"
    upstream = "generations"
    topics = (topic_of(Generation.Completed), topic_of(Generation.Reinstated))
    queue = IMAGES_QUEUE

    def __init__(
        self, generations: GenerationsApplication, blobs: BlobStore, pipeline: ImagePipeline
    ) -> None:
        self.generations, self.blobs, self.pipeline = generations, blobs, pipeline

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        generation = self.generations.generation(None, event.originator_id)
        if (
            generation.status != "completed"
            or generation.processed is None
            or (generation.from_cache is not None and _derived_kinds(generation.processed))
            or self.generations.already_processed(tracking)
        ):
            return False
        spec = self.generations.catalogue.get(generation.model)
        source = self.blobs.get(str((generation.result or {})["storage_key"]))
        try:
            with tracing.span("image.derivatives", attributes={"pixevo.kind": spec.kind}):
                made = self.pipeline.derive(
                    source, generation.output_format, video=spec.kind == "video"
                )
                artefacts = _store(self.blobs, generation.id, made)
        except ProcessingFailed:  # it decoded for the preview: shown as it is, without them
            artefacts = []  # recorded all the same: a stream waiting for them learns of none
        return self.generations.change_tracked(
            tracking,
            generation,
            lambda current: current.derived(artefacts),
            applies=lambda current: not current.derivatives_made,
        )


@dataclass(frozen=True, slots=True)
class Rescreened:
    generation_id: UUID
    before: str
    after: str
    score: float
    version: str


class Rescreen:
    """Re-runs the current classifier and threshold over past images; records what changed."""

    def __init__(
        self,
        generations: GenerationsApplication,
        blobs: BlobStore,
        classifier: ImageClassifier,
        policy: ModerationPolicy | None = None,
    ) -> None:
        self.generations, self.blobs, self.classifier = generations, blobs, classifier
        self.policy = policy or generations.moderation

    def run(self, generation_ids: Iterator[UUID]) -> Iterator[Rescreened]:
        for generation_id in generation_ids:
            changed = self.one(generation_id)
            if changed is not None:
                yield changed

    def one(self, generation_id: UUID) -> Rescreened | None:
        generation = self.generations.generation(None, generation_id)
        processed = generation.processed
        if processed is None or generation.status not in ("completed", "blocked"):
            return None
        judged = next((a for a in processed["artefacts"] if a["kind"] in CLASSIFIED), None)
        if judged is None:
            return None
        data = self.blobs.get(judged["storage_key"])
        classification = self.classifier.classify(data, judged["media_type"])
        verdict = verdict_of(classification, self.policy)
        before = generation.status

        def record() -> str:
            current = self.generations.generation(None, generation_id)
            if verdict.blocked and current.status == "completed":
                current.block("rescreen", verdict.reason, verdict.version, score=verdict.score)
            elif not verdict.blocked and current.status == "blocked":
                if (current.moderation or {}).get("layer") == "provider":
                    return str(current.status)
                current.reinstate(verdict.version, verdict.score)
            self.generations.save(current)
            return str(current.status)

        after = retry_on_conflict(record)()
        if after == before:
            return None
        return Rescreened(generation_id, before, after, verdict.score, verdict.version)
