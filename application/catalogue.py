"""The model catalogue: what each model can do, what it costs, how its provider is spoken to.

Declared as data in ``application/models.toml`` (one ``[[model]]`` entry per model) and decoded
into frozen, validated structs here; a malformed entry fails at load, naming the model.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from application.errors import CatalogueError as CatalogueError
from application.errors import UnknownModel as UnknownModel

CATALOGUE_FILE = Path(__file__).with_name("models.toml")

Kind = Literal["image", "video", "upscale", "edit", "remove_background"]
Wire = Literal["predictions", "queue", "images"]
Positive = Annotated[int, msgspec.Meta(gt=0)]


class SizeRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min: Positive
    max: Positive
    multiple_of: Positive


class Capabilities(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_pixels: Positive
    negative_prompt: bool
    seed: bool
    deterministic: bool
    streaming: bool
    aspect_ratios: tuple[str, ...] | None = None
    sizes: SizeRange | None = None
    allowed_sizes: tuple[str, ...] | None = None  # providers that take only these exact sizes
    durations_s: tuple[Positive, ...] | None = None  # video
    scales: tuple[Positive, ...] | None = None  # upscale


class Pricing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    unit: Literal["image", "megapixel", "input_megapixel", "second"]
    credits: Decimal
    cache_credits: Decimal = Decimal(0)  # what a cache hit costs


class Timing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    p50_ms: Positive
    p95_ms: Positive


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    submit_s: Positive
    total_s: Positive


class RetryPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    attempts: Positive
    backoff_ms: Positive


class ModelSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    name: str
    kind: Kind
    provider: str
    wire: Wire
    capabilities: Capabilities
    pricing: Pricing
    timing: Timing
    timeouts: Timeouts
    retry: RetryPolicy
    fallbacks: tuple[str, ...] = ()


class _File(msgspec.Struct):
    model: list[ModelSpec]


class Catalogue:
    def __init__(self, models: list[ModelSpec]) -> None:
        self.models = {m.key: m for m in models}
        if len(self.models) != len(models):
            raise CatalogueError("two models share a key")
        for model in models:
            caps = model.capabilities
            if (caps.aspect_ratios is None) == (caps.sizes is None):
                raise CatalogueError(f"{model.key}: give exactly one of aspect_ratios and sizes")
            unknown = set(model.fallbacks) - set(self.models)
            if unknown:
                raise CatalogueError(f"{model.key}: unknown fallbacks {sorted(unknown)}")

    @classmethod
    def load(cls, path: Path = CATALOGUE_FILE) -> Catalogue:
        try:
            data = tomllib.loads(path.read_text())
            return cls(msgspec.convert(data, _File).model)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as error:
            raise CatalogueError(f"{path.name}: {error}") from None

    def get(self, key: str) -> ModelSpec:
        try:
            return self.models[key]
        except KeyError:
            raise UnknownModel(f"no model {key!r}") from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.models.values())


@cache
def default_catalogue() -> Catalogue:
    return Catalogue.load()
