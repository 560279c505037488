"""Request and response bodies (msgspec structs), per API.md."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
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


class LedgerEntry(msgspec.Struct):
    id: UUID
    at: datetime
    kind: str
    amount: str
    balance_after: str
    available_after: str
    cause: Cause


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
