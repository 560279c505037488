"""Domain errors.

DomainError
 ├── InvalidAmount          an amount that is not a positive exact number of credits
 ├── InsufficientCredits    a hold bigger than what is available
 ├── UnknownHold            a capture or release of a hold the account never placed
 └── HoldClosed             a capture of a released hold, or a release of a captured one
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class of every rule the domain refuses to break."""


class InvalidAmount(DomainError, ValueError):
    pass


class InsufficientCredits(DomainError):
    def __init__(self, requested: int, available: int) -> None:
        super().__init__(f"requested {requested} units, only {available} available")
        self.requested = requested
        self.available = available


class UnknownHold(DomainError, LookupError):
    pass


class HoldClosed(DomainError):
    pass
