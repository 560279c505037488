"""What post-processing produces, and the ports it goes through (implemented in infrastructure/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from application.errors import Unavailable

#: An image's artefacts made before it is shown (the classifier judges the preview) ...
VISIBLE_KINDS = ("thumb", "preview")
#: ... and those made after (``derive_result``), which follow it within a moment.
DERIVED_KINDS = ("social", "full", "modern", "original")


@dataclass(frozen=True, slots=True)
class Artefact:
    kind: str  # thumb, preview, social, full, modern, original; a video: thumb, poster, original
    data: bytes
    width: int
    height: int
    format: str  # webp, avif, jpeg, png; mp4 (a video's original)
    media_type: str


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    artefacts: list[Artefact]
    width: int
    height: int
    blurhash: str
    quality_score: float


class ImagePipeline(Protocol):
    def process(self, data: bytes, *, video: bool) -> ProcessedImage:
        """What it takes to show the result: the artefact the classifier judges, the
        thumbnail, blurhash and quality (a video: all of its artefacts)."""
        ...

    def derive(self, data: bytes, output_format: str, *, video: bool) -> list[Artefact]:
        """The artefacts made after it is shown (none for a video)."""
        ...


@dataclass(frozen=True, slots=True)
class Classification:
    nsfw_score: float
    version: str  # of the classifier that scored it


class ProcessingFailed(Exception):
    """The result cannot be processed (not a readable image, refused by the classifier): the
    generation fails and nothing is charged; retrying would not help."""


class ClassifierUnavailable(Unavailable):
    """The classifier did not answer; the work is retried later."""


class ImageClassifier(Protocol):
    """Scores an image for safety (the moderation classifier, behind HTTP)."""

    def classify(self, data: bytes, media_type: str) -> Classification: ...
