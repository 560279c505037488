"""Request and response bodies (msgspec structs), per API.md."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

#: No NUL bytes (PostgreSQL text cannot hold them) and no control characters but tab/newline.
Text = Annotated[str, msgspec.Meta(max_length=500, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*$")]
Email = Annotated[
    str, msgspec.Meta(min_length=3, max_length=320, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")
]
#: Credits as a decimal string with at most 4 places (or a JSON integer), bounded.
Credits = Annotated[str, msgspec.Meta(pattern=r"^\d{1,9}(\.\d{1,4})?$", examples=["2.5000"])]
WholeCredits = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]


class Cause(msgspec.Struct):
    type: str
    id: str


class Me(msgspec.Struct):
    user_id: UUID
    email: str
    admin: bool


class CreateUser(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    credits: Credits | WholeCredits = 0
    admin: bool = False


class CreatedUser(msgspec.Struct):
    user_id: UUID
    api_key: str


class Hold(msgspec.Struct):
    id: UUID
    amount: str
    cause: Cause
    created_at: datetime


class CreditsView(msgspec.Struct):
    balance: str
    available: str
    held: str
    holds: list[Hold]
    #: Clawed-back earnings not yet repaid: settled first from the next earnings.
    owed: str = "0.0000"


class LedgerEntry(msgspec.Struct):
    id: UUID
    at: datetime
    kind: str
    amount: str
    balance_after: str
    available_after: str
    cause: Cause
    note: str | None = None


class LedgerPage(msgspec.Struct):
    items: list[LedgerEntry]
    next_cursor: str | None


class Grant(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UUID
    amount: Credits | WholeCredits
    reason: Text = ""


class Health(msgspec.Struct, omit_defaults=True):
    status: str
    checks: dict[str, str] | None = None


# -- models and generations ---------------------------------------------------------------

Prompt = Annotated[str, msgspec.Meta(max_length=4000, pattern=r"^[^\x00]*$")]
OutputFormat = Literal["png", "jpeg", "webp", "avif"]
#: A parameter's value; a text one is short (a ratio) or an image reference
#: (``upload:<id>``, ``generation:<id>``).
ParamValue = (
    Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[^\x00]*$")] | int | float | bool | None
)


class SizeRange(msgspec.Struct):
    min: int
    max: int
    multiple_of: int


class Capabilities(msgspec.Struct):
    aspect_ratios: list[str] | None
    sizes: SizeRange | None
    max_pixels: int
    negative_prompt: bool
    seed: bool
    deterministic: bool
    streaming: bool


class Pricing(msgspec.Struct):
    unit: str
    credits: str


class Timing(msgspec.Struct):
    p50_ms: int
    p95_ms: int


class Model(msgspec.Struct):
    key: str
    name: str
    kind: str
    provider: str
    capabilities: Capabilities
    pricing: Pricing
    timing: Timing
    fallbacks: list[str]


class ModelList(msgspec.Struct):
    items: list[Model]
    next_cursor: str | None = None


class CreateGeneration(msgspec.Struct, forbid_unknown_fields=True):
    model: Annotated[
        str,
        msgspec.Meta(
            min_length=1, max_length=100, pattern=r"^[a-z0-9.-]+$", examples=["flux-schnell"]
        ),
    ]
    prompt: Prompt = ""
    negative_prompt: Prompt | None = None
    params: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=32)], ParamValue],
        msgspec.Meta(max_length=16),
    ] = msgspec.field(default_factory=dict)
    allow_fallback: bool = True
    output_format: OutputFormat = "png"


class Quote(msgspec.Struct):
    model: str
    cost_credits: str
    params: dict[str, Any]
    warnings: list[str]


class Progress(msgspec.Struct):
    percent: float
    estimated: bool
    preview_url: str | None = None


class Derivative(msgspec.Struct):
    kind: str
    url: str
    width: int
    height: int
    format: str
    bytes: int


class Result(msgspec.Struct):
    url: str
    width: int
    height: int
    format: str
    blurhash: str | None
    quality_score: float | None
    nsfw_score: float | None
    derivatives: list[Derivative]


class ErrorInfo(msgspec.Struct):
    code: str
    message: str


class Links(msgspec.Struct):
    self: str
    events: str


class Waiting(msgspec.Struct):
    """Why a queued generation waits: its provider is down (``retry_at``: its next try) or its
    user has the most generations at providers at once (``retry_at`` null: when one ends);
    ``give_up_at``: when it fails instead, with nothing charged."""

    reason: str
    retry_at: datetime | None
    give_up_at: datetime | None


class GenerationView(msgspec.Struct):
    id: UUID
    status: str
    model: str
    provider: str
    prompt: str
    negative_prompt: str | None
    params: dict[str, Any]
    cost_credits: str
    charged_credits: str | None
    progress: Progress | None
    result: Result | None
    error: ErrorInfo | None
    served_from_cache: bool
    fallback_from: str | None
    created_at: datetime
    completed_at: datetime | None
    links: Links
    notice: str | None = None  # e.g. its provider is down and it waits: taking longer than usual
    waiting: Waiting | None = None


class GenerationList(msgspec.Struct):
    items: list[GenerationView]
    next_cursor: str | None


class StreamToken(msgspec.Struct):
    token: str
    expires_at: datetime


# -- uploads -------------------------------------------------------------------------------


class Upload(msgspec.Struct):
    id: UUID
    url: str
    width: int
    height: int
    format: str
    bytes: int
    sha256: str
    created_at: datetime
