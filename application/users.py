"""Users and their API keys.

Identity is plain state behind the :class:`UserStore` port, not an event-sourced context:
nothing reacts to it and its history settles nothing. A key is shown once, at creation, and
stored only as a SHA-256 hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID, uuid4

from application.billing import BillingApplication
from application.errors import EmailTaken as EmailTaken
from application.errors import InvalidEmail as InvalidEmail
from domain.credits import Cause, positive_units

KEY_PREFIX = "pxv_"
_EMAIL = re.compile(r"^[^@\s\x00]{1,64}@[^@\s\x00]{1,255}$")


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    email: str
    admin: bool


@dataclass(frozen=True, slots=True)
class CreatedUser:
    user_id: UUID
    api_key: str


class UserStore(Protocol):
    def add(self, user: User, key_hash: bytes) -> None:
        """Stores a new user with one key; raises :class:`EmailTaken` for a known email."""

    def add_key(self, user_id: UUID, key_hash: bytes) -> None: ...

    def find_by_email(self, email: str) -> User | None: ...

    def exists(self, user_id: UUID) -> bool: ...


def hash_key(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class Users:
    def __init__(self, store: UserStore, billing: BillingApplication) -> None:
        self.store = store
        self.billing = billing

    def create(self, email: str, credits: str | int = 0, *, admin: bool = False) -> CreatedUser:
        """A new user with a credit account (funded with ``credits``) and a fresh API key."""
        email = email.strip()
        if not _EMAIL.match(email):
            raise InvalidEmail(f"{email!r} is not an email address")
        amount = positive_units(credits) if credits not in (0, "0") else 0
        user = User(id=uuid4(), email=email, admin=admin)
        api_key = new_key()
        self.store.add(user, hash_key(api_key))
        self.billing.open_account(user.id)
        if amount:
            self.billing.deposit(user.id, "grant", amount, Cause("signup", str(user.id)), "signup")
        return CreatedUser(user.id, api_key)

    def exists(self, user_id: UUID) -> bool:
        return self.store.exists(user_id)

    def issue_key(self, user_id: UUID) -> str:
        api_key = new_key()
        self.store.add_key(user_id, hash_key(api_key))
        return api_key
