"""Moderation: what decides whether a result is shown, in three layers.

1. Prompt screening, before anything is charged or submitted: configurable rules
   (``moderation.toml``, versioned) refuse a prompt with :class:`ContentPolicyViolation`.
2. The provider's own safety filter: a ``content_rejected`` failure blocks the generation.
3. An image classifier (a port; HTTP in production) scores each result; at or above the
   threshold the generation is blocked.

Every decision records the version of the rule set, provider or classifier that made it.
Whether a blocked generation is billed follows :attr:`ModerationPolicy.blocked_billing`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

from application.errors import ContentPolicyViolation as ContentPolicyViolation

RULES_FILE = Path(__file__).with_name("moderation.toml")
BlockedBilling = Literal["waive", "charge"]


class _Rule(msgspec.Struct, frozen=True):
    id: str
    pattern: str
    message: str


class _File(msgspec.Struct, frozen=True):
    version: str
    rule: list[_Rule]


@dataclass(frozen=True)
class PromptRules:
    version: str
    rules: tuple[tuple[str, re.Pattern[str], str], ...]

    @classmethod
    def load(cls, path: Path = RULES_FILE) -> PromptRules:
        try:
            data = msgspec.convert(tomllib.loads(path.read_text()), _File)
            compiled = tuple(
                (r.id, re.compile(rf"\b(?:{r.pattern})\b", re.IGNORECASE), r.message)
                for r in data.rule
            )
        except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError, re.error) as error:
            raise ValueError(f"moderation rules {path}: {error}") from None
        return cls(data.version, compiled)

    def screen(self, *texts: str | None) -> None:
        """Raises :class:`ContentPolicyViolation` for the first rule any text matches."""
        for text in texts:
            if not text:
                continue
            for rule_id, pattern, message in self.rules:
                if pattern.search(text):
                    raise ContentPolicyViolation(rule_id, message, self.version)


@dataclass(frozen=True)
class ModerationPolicy:
    #: A classifier score at or above this blocks the image.
    nsfw_threshold: float = 0.8
    #: Whether a blocked generation is billed (``charge``: the actual cost) or not (``waive``).
    blocked_billing: BlockedBilling = "waive"
    rules: PromptRules = field(default_factory=PromptRules.load)

    def blocks(self, score: float) -> bool:
        return score >= self.nsfw_threshold

    def blocked_charge(self, cost: int) -> int:
        """What a blocked generation is billed under :attr:`blocked_billing`."""
        return cost if self.blocked_billing == "charge" else 0
