"""From what a user asked to what a provider receives, and what it costs.

One common request is normalised per model: aspect ratios become exact pixels rounded to the
model's multiple (or exact pixels the nearest supported ratio), what can be clamped is clamped
with a warning, what cannot is refused naming the field. The quote is computed from the
normalised parameters, so it is exactly what the hold will be. Image inputs (``params.image``,
``params.mask``) arrive resolved; their rules are :mod:`application.inputs`'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from typing import Any

from application.catalogue import ModelSpec, SizeRange
from application.errors import CatalogueError
from application.errors import InvalidRequest as InvalidRequest
from application.inputs import (
    ImageInput,
    input_ratio,
    input_size,
    require_image,
    take_inputs,
    upscaled_size,
)
from domain.credits import UNITS_PER_CREDIT

OUTPUT_FORMATS = ("png", "jpeg", "webp", "avif")
MAX_PROMPT = 4000
MAX_SEED = 2**32 - 1
_DEFAULT_PIXELS = 1024 * 1024
#: The model kinds a prompt is optional for (an upscaler may take one; a background remover
#: takes none: it is dropped with a warning).
PROMPT_OPTIONAL = frozenset({"upscale", "remove_background"})
#: One normalised parameter as a provider receives it: a number (width, height, seed, steps,
#: guidance, duration_s, scale), a ratio's text (aspect_ratio) or an image reference (image,
#: mask: the adapter sends the resolved input in its place).
ParamValue = int | float | str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    model: str
    prompt: str
    negative_prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    allow_fallback: bool = True
    output_format: str = "png"


@dataclass(frozen=True, slots=True)
class Normalised:
    model: str
    params: dict[str, ParamValue]  # what the provider receives: width, height, seed, ...
    prompt: str
    negative_prompt: str | None
    output_format: str
    cost_units: int
    warnings: tuple[str, ...] = ()
    #: The resolved image inputs, by parameter (``image``, ``mask``).
    inputs: Mapping[str, ImageInput] = field(default_factory=dict)


def normalise(
    spec: ModelSpec, request: GenerationRequest, inputs: Mapping[str, ImageInput] | None = None
) -> Normalised:
    """``inputs``: the request's image references, resolved (see :mod:`application.inputs`)."""
    warnings: list[str] = []
    prompt = request.prompt.strip()
    if spec.kind == "remove_background" and prompt:
        warnings.append(f"{spec.key} takes no prompt: it was dropped")
        prompt = ""
    if spec.kind not in PROMPT_OPTIONAL and not prompt:
        raise InvalidRequest("prompt", "must not be empty")
    if len(prompt) > MAX_PROMPT:
        raise InvalidRequest("prompt", f"at most {MAX_PROMPT} characters")
    if request.output_format not in OUTPUT_FORMATS:
        raise InvalidRequest("output_format", f"one of {', '.join(OUTPUT_FORMATS)}")
    raw = dict(request.params)
    inputs = inputs or {}
    source = take_inputs(spec, raw, inputs)
    params: dict[str, ParamValue] = {name: item.reference for name, item in inputs.items()}
    if spec.kind == "upscale":
        width, height = _upscaled(spec, raw, params, source)
    elif spec.kind == "remove_background":
        width, height = _cut_out(spec, raw, source)
    else:
        width, height = _dimensions(spec, raw, params, warnings, source)
        require_image(spec, source)
    params["width"], params["height"] = width, height
    negative = (request.negative_prompt or "").strip() or None
    if negative and not spec.capabilities.negative_prompt:
        warnings.append(f"{spec.key} takes no negative prompt: it was dropped")
        negative = None
    _seed(spec, raw, params, warnings)
    _number(raw, params, "steps", low=1, high=100, kind=int, warnings=warnings)
    _number(raw, params, "guidance", low=0.0, high=30.0, kind=float, warnings=warnings)
    seconds = _duration(spec, raw, params)
    if spec.kind != "upscale":
        _scale(spec, raw, params)
    unknown = sorted(
        set(raw)
        - {"aspect_ratio", "width", "height", "seed", "steps", "guidance", "duration_s", "scale"}
    )
    if unknown:
        raise InvalidRequest(f"params.{unknown[0]}", "not a parameter any model takes")
    return Normalised(
        model=spec.key,
        params=params,
        prompt=prompt,
        negative_prompt=negative,
        output_format=request.output_format,
        cost_units=cost_units(
            spec, width, height, seconds, input_pixels=source.pixels if source else None
        ),
        warnings=tuple(warnings),
        inputs=dict(inputs),
    )


def cost_units(
    spec: ModelSpec,
    width: int,
    height: int,
    seconds: int | None,
    *,
    input_pixels: int | None = None,
) -> int:
    price = spec.pricing.credits
    if spec.pricing.unit == "megapixel":
        amount = price * Decimal(width * height) / Decimal(1_000_000)
    elif spec.pricing.unit == "input_megapixel":
        if input_pixels is None:
            raise CatalogueError(f"{spec.key} prices its input, but takes none")
        amount = price * Decimal(input_pixels) / Decimal(1_000_000)
    elif spec.pricing.unit == "second":
        amount = price * Decimal(seconds or 1)
    else:
        amount = price
    return int((amount * UNITS_PER_CREDIT).to_integral_value(rounding=ROUND_CEILING))


# -- dimensions ----------------------------------------------------------------------------


def _upscaled(
    spec: ModelSpec, raw: dict[str, Any], params: dict[str, Any], source: ImageInput | None
) -> tuple[int, int]:
    """An upscale's output: its input's size times the scale (never asked for directly)."""
    for name in ("width", "height", "aspect_ratio"):
        if raw.get(name) is not None:
            raise InvalidRequest(f"params.{name}", "an upscale is its input's size x params.scale")
    scale = _scale(spec, raw, params)
    source = require_image(spec, source)
    if source is None or scale is None:  # pragma: no cover - both required just above
        raise CatalogueError(f"{spec.key} is an upscaler without scales")
    return upscaled_size(spec, source, scale)


def _cut_out(spec: ModelSpec, raw: dict[str, Any], source: ImageInput | None) -> tuple[int, int]:
    """A background removal's output: its input's size (never asked for); nothing to tune."""
    for name in ("width", "height", "aspect_ratio"):
        if raw.get(name) is not None:
            raise InvalidRequest(f"params.{name}", "a background removal is its input's size")
    for name in ("steps", "guidance"):
        if raw.get(name) is not None:
            raise InvalidRequest(f"params.{name}", f"{spec.key} takes no {name}")
    source = require_image(spec, source)
    if source is None:  # pragma: no cover - required just above
        raise CatalogueError(f"{spec.key} needs an input image")
    return input_size(spec, source)


def _dimensions(
    spec: ModelSpec,
    raw: dict[str, Any],
    params: dict[str, Any],
    warnings: list[str],
    source: ImageInput | None = None,
) -> tuple[int, int]:
    """Pixels (or a ratio) as asked; without either, the input's (an edit) or the default."""
    caps = spec.capabilities
    budget = min(source.pixels if source else _DEFAULT_PIXELS, caps.max_pixels)
    ratio_text = raw.get("aspect_ratio")
    has_pixels = "width" in raw or "height" in raw
    if ratio_text is not None and has_pixels:
        raise InvalidRequest("params.aspect_ratio", "give a ratio or width/height, not both")
    if caps.aspect_ratios is not None:  # the provider takes a ratio
        if has_pixels:
            w, h = _pixels(raw)
            ratio_text = _nearest_ratio(caps.aspect_ratios, Fraction(w, h))
            warnings.append(f"{spec.key} takes aspect ratios: {w}x{h} became {ratio_text}")
        ratio_text = ratio_text or caps.aspect_ratios[0]
        if ratio_text not in caps.aspect_ratios:
            raise InvalidRequest(
                "params.aspect_ratio", f"{spec.key} supports {', '.join(caps.aspect_ratios)}"
            )
        params["aspect_ratio"] = ratio_text
        ratio = _ratio(ratio_text) if ratio_text != "match_input" else input_ratio(source)
        return _fit(ratio, budget, 8, 64, 8192)
    sizes = _sizes(spec)
    if has_pixels:
        w, h = _pixels(raw)
    elif ratio_text is not None:
        w, h = _fit(_ratio(ratio_text), budget, sizes.multiple_of, sizes.min, sizes.max)
    elif source is not None:
        w, h = source.width, source.height
    else:
        w = h = min(1024, sizes.max)
    fitted = _clamp(w, h, spec)
    if caps.allowed_sizes:
        fitted = _nearest_allowed(caps.allowed_sizes, fitted)
    if fitted != (w, h):
        warnings.append(f"{w}x{h} adjusted to {fitted[0]}x{fitted[1]} for {spec.key}")
    return fitted


def _sizes(spec: ModelSpec) -> SizeRange:
    if spec.capabilities.sizes is None:
        raise CatalogueError(f"{spec.key} has neither aspect ratios nor sizes")
    return spec.capabilities.sizes


def _pixels(raw: dict[str, Any]) -> tuple[int, int]:
    return _side(raw, "width"), _side(raw, "height")


def _side(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"params.{name}", "width and height must both be integers")
    if not 1 <= value <= 16384:
        raise InvalidRequest(f"params.{name}", "must be between 1 and 16384")
    return value


def _ratio(text: Any) -> Fraction:
    try:
        a, b = str(text).split(":")
        ratio = Fraction(int(a), int(b))
    except (ValueError, ZeroDivisionError):
        raise InvalidRequest("params.aspect_ratio", "a ratio like 16:9") from None
    if not Fraction(1, 8) <= ratio <= 8:
        raise InvalidRequest("params.aspect_ratio", "between 1:8 and 8:1")
    return ratio


def _nearest_ratio(choices: tuple[str, ...], ratio: Fraction) -> str:
    usable = [c for c in choices if c != "match_input"]
    return min(usable, key=lambda c: abs(math.log(_ratio(c) / ratio)))


def _fit(ratio: Fraction, pixels: int, multiple: int, low: int, high: int) -> tuple[int, int]:
    """Width and height of about ``pixels`` with this ratio, rounded to ``multiple``."""
    w = math.sqrt(pixels * ratio)
    h = w / float(ratio)
    return _round(w, multiple, low, high), _round(h, multiple, low, high)


def _round(value: float, multiple: int, low: int, high: int) -> int:
    rounded = max(multiple, round(value / multiple) * multiple)
    return max(_ceil_to(low, multiple), min(_floor_to(high, multiple), rounded))


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _floor_to(value: int, multiple: int) -> int:
    return value // multiple * multiple


def _clamp(w: int, h: int, spec: ModelSpec) -> tuple[int, int]:
    sizes = _sizes(spec)
    m = sizes.multiple_of
    w, h = _round(w, m, sizes.min, sizes.max), _round(h, m, sizes.min, sizes.max)
    limit = spec.capabilities.max_pixels
    if w * h > limit:  # shrink both sides, keeping the ratio, down onto the grid
        scale = math.sqrt(limit / (w * h))
        w = max(_ceil_to(sizes.min, m), _floor_to(int(w * scale), m))
        h = max(_ceil_to(sizes.min, m), _floor_to(int(h * scale), m))
    return w, h


def _nearest_allowed(allowed: tuple[str, ...], size: tuple[int, int]) -> tuple[int, int]:
    options = [tuple(int(v) for v in s.split("x")) for s in allowed]
    ratio = size[0] / size[1]
    best = min(
        options,
        key=lambda o: (abs(math.log(o[0] / o[1] / ratio)), abs(o[0] * o[1] - size[0] * size[1])),
    )
    return best[0], best[1]


# -- the other parameters ------------------------------------------------------------------


def _seed(
    spec: ModelSpec, raw: dict[str, Any], params: dict[str, Any], warnings: list[str]
) -> None:
    if "seed" not in raw or raw["seed"] is None:
        return
    seed = raw["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise InvalidRequest("params.seed", f"an integer from 0 to {MAX_SEED}")
    if spec.capabilities.seed:
        params["seed"] = seed
    else:
        warnings.append(f"{spec.key} takes no seed: it was dropped")


def _number(
    raw: dict[str, Any],
    params: dict[str, Any],
    name: str,
    *,
    low: float,
    high: float,
    kind: type,
    warnings: list[str],
) -> None:
    if name not in raw or raw[name] is None:
        return
    value = raw[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
        or not math.isfinite(value)
    ):
        expected = "an integer" if kind is int else "a number"
        raise InvalidRequest(f"params.{name}", f"must be {expected}")
    clamped = kind(min(high, max(low, value)))
    if clamped != value:
        warnings.append(f"{name} {value} clamped to {clamped}")
    params[name] = clamped


def _duration(spec: ModelSpec, raw: dict[str, Any], params: dict[str, Any]) -> int | None:
    allowed = spec.capabilities.durations_s
    if allowed is None:
        if raw.get("duration_s") is not None:
            raise InvalidRequest("params.duration_s", f"{spec.key} makes images, not videos")
        return None
    seconds = raw.get("duration_s", allowed[0])
    if seconds not in allowed or isinstance(seconds, bool):
        raise InvalidRequest("params.duration_s", f"one of {', '.join(map(str, allowed))}")
    params["duration_s"] = seconds
    return int(seconds)


def _scale(spec: ModelSpec, raw: dict[str, Any], params: dict[str, Any]) -> int | None:
    allowed = spec.capabilities.scales
    if allowed is None:
        if raw.get("scale") is not None:
            raise InvalidRequest("params.scale", f"{spec.key} is not an upscaler")
        return None
    scale = raw.get("scale", allowed[0])
    if scale not in allowed or isinstance(scale, bool):
        raise InvalidRequest("params.scale", f"one of {', '.join(map(str, allowed))}")
    params["scale"] = scale
    return int(scale)
