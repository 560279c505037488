"""A workflow's local operations, as data: their ports, their parameters and the size they make.

Pure Python, so the engine can check a graph and infer every node's output size before a pixel
is touched; the pixels are :mod:`infrastructure.imaging.local_ops`' (through :class:`LocalOps`).

    resize          image            {width?, height?, fit?, enlarge?}   (width or height needed)
    crop            image            {x, y, width, height}               (inside the image)
    colour_correct  image            {brightness?, contrast?, saturation?, gamma?}
    composite       base, overlay    {x?, y?, opacity?}                  (the base's size)
    grayscale       image            {}

resize: a missing side follows the image's aspect ratio (then every fit is the same). With both
sides, ``contain`` fits the image inside the box keeping its ratio, ``cover`` fills the box
keeping its ratio and crops the overflow around the centre, ``fill`` stretches to the box.
Without ``enlarge`` (the default) no pixel is upsampled: ``contain`` stops at the image's size,
``cover`` into a box bigger than the image makes the largest centred crop of the box's ratio
at the image's own scale, and ``fill`` takes each side at most as long as the image's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from application.errors import InvalidRequest

LOCAL_OPS = ("resize", "crop", "colour_correct", "composite", "grayscale")
#: Each local operation's input ports.
INPUT_PORTS: Mapping[str, tuple[str, ...]] = {
    "resize": ("image",),
    "crop": ("image",),
    "colour_correct": ("image",),
    "composite": ("base", "overlay"),
    "grayscale": ("image",),
}
FITS = ("contain", "cover", "fill")
MAX_SIDE = 16384
#: The most pixels a local operation makes (as many as an upload may have).
MAX_PIXELS = 40_000_000

Problem = tuple[str, str]  # (field, message)
Size = tuple[int, int]  # (width, height)
Sizes = Mapping[str, Size]  # by input port
Sizer = Callable[[Mapping[str, Any], Sizes], Size]


class LocalOpError(InvalidRequest):
    """A local operation that cannot run as asked (HTTP 422 naming the field): a parameter, a
    crop outside its image, an input that does not decode."""


@dataclass(frozen=True, slots=True)
class LocalOutput:
    """What a local operation made: always a PNG (it keeps alpha), without metadata."""

    data: bytes
    width: int
    height: int
    media_type: str = "image/png"


class LocalOps(Protocol):
    """Runs a local operation on encoded images by port (the port the engine calls)."""

    def __call__(
        self, op: str, params: Mapping[str, Any], images: Mapping[str, bytes]
    ) -> LocalOutput: ...


# -- parameters ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Param:
    kind: Literal["integer", "number", "boolean", "choice"]
    low: float = -math.inf
    high: float = math.inf
    choices: tuple[str, ...] = ()
    required: bool = False

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (never ``None``: that is "not given"), or ``None``."""
        if self.kind == "boolean":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "choice":
            return None if value in self.choices else f"one of {', '.join(self.choices)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {'an integer' if self.kind == 'integer' else 'a number'}"
        if self.kind == "integer" and not isinstance(value, int):
            return "must be an integer"
        if not math.isfinite(value) or not self.low <= value <= self.high:
            return f"must be between {self.low:g} and {self.high:g}"
        return None


_SIDE = _Param("integer", 1, MAX_SIDE)
_PARAMS: Mapping[str, Mapping[str, _Param]] = {
    "resize": {
        "width": _SIDE,
        "height": _SIDE,
        "fit": _Param("choice", choices=FITS),
        "enlarge": _Param("boolean"),
    },
    "crop": {
        "x": _Param("integer", 0, MAX_SIDE - 1, required=True),
        "y": _Param("integer", 0, MAX_SIDE - 1, required=True),
        "width": _Param("integer", 1, MAX_SIDE, required=True),
        "height": _Param("integer", 1, MAX_SIDE, required=True),
    },
    "colour_correct": {
        "brightness": _Param("number", -1, 1),
        "contrast": _Param("number", 0, 3),
        "saturation": _Param("number", 0, 3),
        "gamma": _Param("number", 0.1, 5),
    },
    "composite": {
        "x": _Param("integer", -MAX_SIDE, MAX_SIDE),
        "y": _Param("integer", -MAX_SIDE, MAX_SIDE),
        "opacity": _Param("number", 0, 1),
    },
    "grayscale": {},
}
#: The value of each optional parameter that is not given.
DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "resize": {"fit": "contain", "enlarge": False},
    "colour_correct": {"brightness": 0.0, "contrast": 1.0, "saturation": 1.0, "gamma": 1.0},
    "composite": {"x": 0, "y": 0, "opacity": 1.0},
}


def check_params(op: str, params: Mapping[str, Any]) -> list[Problem]:
    """Every problem with ``params`` for ``op``, as ``(field, message)``; ``[]`` when none.

    A ``null`` value is taken as not given.
    """
    if op not in _PARAMS:
        return [("op", f"{op!r} is not a local operation: one of {', '.join(LOCAL_OPS)}")]
    if not isinstance(params, Mapping):
        return [("params", "must be an object")]
    known = _PARAMS[op]
    problems = [
        (f"params.{name}", f"not a parameter of {op}") for name in params if name not in known
    ]
    for name, param in known.items():
        value = params.get(name)
        if value is None:
            if param.required:
                problems.append((f"params.{name}", f"{op} needs it"))
            continue
        message = param.problem(value)
        if message is not None:
            problems.append((f"params.{name}", message))
    if op == "resize" and params.get("width") is None and params.get("height") is None:
        problems.append(("params.width", "give width, height or both"))
    return problems


def with_defaults(op: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (checked) with every optional one that was not given set to its default."""
    given = {name: value for name, value in params.items() if value is not None}
    return {**DEFAULTS.get(op, {}), **given}


def checked(op: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with defaults; the first problem :func:`check_params` finds is raised."""
    problems = check_params(op, params)
    if problems:
        raise LocalOpError(*problems[0])
    return with_defaults(op, params)


# -- sizes ---------------------------------------------------------------------------------


def output_size(
    op: str, params: Mapping[str, Any], sizes: Mapping[str, tuple[int, int]]
) -> tuple[int, int]:
    """The (width, height) ``op`` makes from inputs of ``sizes`` (by port), without pixels.

    Raises :class:`LocalOpError` naming the field for bad parameters, a missing input, a crop
    outside its image and an output of more than :data:`MAX_PIXELS`.
    """
    values = checked(op, params)
    for port in INPUT_PORTS[op]:
        if port not in sizes:
            raise LocalOpError(f"inputs.{port}", f"{op} needs it")
    width, height = _SIZERS[op](values, sizes)
    if width * height > MAX_PIXELS:
        raise LocalOpError(
            "params.width" if op == "resize" else f"inputs.{INPUT_PORTS[op][0]}",
            f"{width}x{height} is more than {MAX_PIXELS:,} pixels",
        )
    return width, height


def resize_plan(values: Mapping[str, Any], width: int, height: int) -> tuple[Size, Size]:
    """How a resize of a ``width`` x ``height`` image goes: the size the whole image is scaled
    to, then the size of the centred crop of that (the output; the same unless ``cover``)."""
    box_w: Any = values.get("width")  # checked: positive integers, at least one of them
    box_h: Any = values.get("height")
    enlarge = bool(values["enlarge"])
    fit = str(values["fit"]) if box_w is not None and box_h is not None else "one side"
    if fit == "fill":
        size = (box_w, box_h) if enlarge else (min(box_w, width), min(box_h, height))
        return size, size
    if fit == "cover":
        scale = max(box_w / width, box_h / height)
        if scale > 1 and not enlarge:  # the box shrinks to the image instead
            crop = (min(width, _side(box_w / scale)), min(height, _side(box_h / scale)))
            return (width, height), crop
        scaled = (max(box_w, _side(width * scale)), max(box_h, _side(height * scale)))
        return scaled, (box_w, box_h)
    if fit == "contain":
        scale = min(box_w / width, box_h / height)
    else:  # one side: the other follows the image's ratio, whatever the fit
        scale = box_w / width if box_w is not None else box_h / height
    scale = scale if enlarge else min(1.0, scale)
    size = (_side(width * scale), _side(height * scale))
    return size, size


def _side(value: float) -> int:
    return max(1, math.floor(value + 0.5))


def _resize_size(values: Mapping[str, Any], sizes: Sizes) -> Size:
    return resize_plan(values, *sizes["image"])[1]


def _crop_size(values: Mapping[str, Any], sizes: Sizes) -> Size:
    width, height = sizes["image"]
    if values["x"] >= width:
        raise LocalOpError("params.x", f"{values['x']} is outside the {width} px wide image")
    if values["y"] >= height:
        raise LocalOpError("params.y", f"{values['y']} is outside the {height} px high image")
    if values["x"] + values["width"] > width:
        raise LocalOpError(
            "params.width", f"x + width is {values['x'] + values['width']}, beyond {width} px"
        )
    if values["y"] + values["height"] > height:
        raise LocalOpError(
            "params.height", f"y + height is {values['y'] + values['height']}, beyond {height} px"
        )
    return int(values["width"]), int(values["height"])


def _same_size(port: str) -> Sizer:
    return lambda _values, sizes: sizes[port]


_SIZERS: Mapping[str, Sizer] = {
    "resize": _resize_size,
    "crop": _crop_size,
    "colour_correct": _same_size("image"),
    "composite": _same_size("base"),
    "grayscale": _same_size("image"),
}
