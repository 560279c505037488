"""Error categories, and the domain's own errors.

Every error Pixevo raises on purpose is a :class:`PixevoError` of one category; the category,
not the concrete class, decides how an edge answers (the HTTP status, for one). The categories
live here, in the domain, so that domain errors can have them with the standard library only;
:mod:`application.errors` re-exports them and draws the whole tree.

PixevoError
 ├── NotFound             what was asked for does not exist (or is not the caller's)
 ├── Conflict             the request is valid but the state it would change does not allow it
 ├── Invalid              the request is malformed or impossible, whatever the state
 ├── InsufficientFunds    the account cannot pay for it
 ├── Unavailable          a dependency is down; the same request may succeed later
 ├── Forbidden            the caller may not do it
 ├── TooLarge             what was sent is bigger than accepted (bytes, pixels)
 └── DomainError          a rule the domain refuses to break (also has its category)
      ├── InvalidAmount          Invalid: not a positive exact number of credits
      ├── InsufficientCredits    InsufficientFunds: a hold bigger than what is available
      ├── UnknownHold            NotFound: a capture or release of a hold never placed
      └── HoldClosed             Conflict: a capture of a released hold, or a release of a
                                 captured one
"""

from __future__ import annotations


class PixevoError(Exception):
    """Base class of every error Pixevo raises on purpose."""


class NotFound(PixevoError):
    """What was asked for does not exist, or does not belong to the caller."""


class Conflict(PixevoError):
    """The request is valid, but the current state does not allow it."""


class Invalid(PixevoError):
    """The request is malformed or impossible, whatever the state."""


class InsufficientFunds(PixevoError):
    """The account cannot pay for what was asked."""


class Unavailable(PixevoError):
    """A dependency cannot answer now; the same request may succeed later."""


class Forbidden(PixevoError):
    """The caller is not allowed to do this."""


class TooLarge(PixevoError):
    """What was sent is bigger than the platform accepts (bytes, or pixels once decoded)."""


class DomainError(PixevoError):
    """Base class of every rule the domain refuses to break."""


class InvalidAmount(DomainError, Invalid, ValueError):
    pass


class InsufficientCredits(DomainError, InsufficientFunds):
    def __init__(self, requested: int, available: int) -> None:
        # credits as the API writes them (units are 1/10,000 credit; formatting them here
        # rather than with domain.credits, which imports this module)
        super().__init__(
            f"this costs {requested / 10_000:.4f} credits; {available / 10_000:.4f} are available"
        )
        self.requested = requested
        self.available = available


class UnknownHold(DomainError, NotFound, LookupError):
    pass


class HoldClosed(DomainError, Conflict):
    pass
