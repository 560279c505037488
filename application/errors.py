"""Pixevo's errors, by category.

Every error raised on purpose is a :class:`PixevoError` of exactly one category, and edges answer
by category (``interfaces/http/problems.py`` gives each one status), never by concrete class. A
new error picks its category and needs no edit at the edges. The categories are defined in
:mod:`domain.errors` (the domain's own errors need them and may import nothing of ours) and
re-exported here.

Our exception hierarchy (where a class is defined, if not here, in brackets)::

    PixevoError
    ├── NotFound                                                          HTTP 404
    │   ├── AccountNotFound         no credit account for the user
    │   ├── UnknownModel            no model of that key                [catalogue]
    │   ├── GenerationNotFound      no such generation of the caller's  [generations]
    │   ├── UploadNotFound          no such upload of the caller's      [uploads]
    │   ├── WorkflowNotFound        no such workflow of the caller's    [workflows]
    │   ├── RunNotFound             no such workflow run of the caller's [workflows]
    │   ├── ListingNotFound         no such listing (or not the caller's, to change) [marketplace]
    │   ├── InstallNotFound         no such install                     [marketplace]
    │   └── UnknownHold             a hold the account never placed     [domain.errors]
    ├── Conflict                                                          HTTP 409
    │   ├── EmailTaken              a user with that email exists
    │   ├── IdempotencyConflict     an Idempotency-Key reused, new body [generations]
    │   ├── ConcurrencyConflict     the aggregate kept changing under the command
    │   ├── GenerationFinished      a change to an ended generation     [domain.generation]
    │   ├── RunFinished             a change to an ended run or node    [domain.workflow]
    │   ├── IdempotencyConflict     an Idempotency-Key reused for a run [workflows]
    │   ├── ListingClosed           an install or change of an unlisted listing [domain.marketplace]
    │   ├── OwnListing              a creator installing their own listing [domain.marketplace]
    │   ├── AlreadyRefunded         a second refund of an install       [domain.marketplace]
    │   ├── NotInstalled            an upgrade of a workflow no install made [marketplace]
    │   ├── CopyNotListable         a listing of an installed copy      [marketplace]
    │   └── HoldClosed              a hold already captured or released [domain.errors]
    ├── Invalid                                                           HTTP 422
    │   ├── InvalidGraph            a workflow graph or run's inputs: every problem [workflow_graph]
    │   ├── InvalidRequest          not something the model can do, naming the field
    │   │   └── LocalOpError        a local workflow op that cannot run as asked [workflow_ops]
    │   ├── NotAnImage              an upload that does not decode as an image [uploads]
    │   ├── ContentPolicyViolation  a prompt the moderation rules refuse
    │   ├── InvalidEmail            not an email address
    │   ├── InvalidAmount           not a positive exact credit amount  [domain.errors]
    │   └── BadCursor               a page cursor we did not issue [projections.ledger_queries]
    ├── InsufficientFunds                                                 HTTP 402
    │   └── InsufficientCredits     a hold bigger than what is available [domain.errors]
    ├── Unavailable                                                       HTTP 503
    │   ├── CircuitOpen             a provider's circuit is open        [ports]
    │   └── ClassifierUnavailable   the image classifier did not answer [imaging]
    ├── Forbidden                                                         HTTP 403
    │   └── InvalidStreamToken      an expired or forged stream token   [infrastructure.tokens]
    ├── TooLarge                                                          HTTP 413
    │   └── ImageTooLarge           an upload over the byte or pixel limit [uploads]
    └── CatalogueError              a broken model catalogue: our fault, so no category (500)

A bare module name is one of :mod:`application`'s. ``DomainError`` (in :mod:`domain.errors`)
is a second base of the domain's errors, beside their category.

Some answers are decided where the error is caught, not by its category: a ``BadCursor`` is a
400 in the routes that page, an ``UnknownModel`` a 404 in the catalogue route and an
``InvalidRequest`` in a generation request, an ``InvalidStreamToken`` a 401 in authentication.
``InvalidRequest`` and ``ContentPolicyViolation`` carry the field (and the rule) that their
problem body names.

Outside the tree are the saga's control-flow signals, which never reach a client:
``ProviderFailure`` (:mod:`application.providers`), ``Deferral`` (:mod:`application.ports`),
``ProcessingFailed`` (:mod:`application.imaging`), ``UnknownReaction``.

Library errors are not translated: a database, event store or Redis that cannot be reached
raises its own error, which the HTTP edge answers with 503 like an :class:`Unavailable`.
"""

from __future__ import annotations

from domain.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InsufficientFunds,
    Invalid,
    NotFound,
    PixevoError,
    TooLarge,
    Unavailable,
)

__all__ = [
    "AccountNotFound",
    "CatalogueError",
    "ConcurrencyConflict",
    "Conflict",
    "ContentPolicyViolation",
    "DomainError",
    "EmailTaken",
    "Forbidden",
    "InsufficientFunds",
    "Invalid",
    "InvalidEmail",
    "InvalidRequest",
    "NotFound",
    "PixevoError",
    "TooLarge",
    "Unavailable",
    "UnknownModel",
]


# -- not found -----------------------------------------------------------------------------


class AccountNotFound(NotFound, LookupError):
    """No credit account for the user."""


class UnknownModel(NotFound, LookupError):
    """No model of that key in the catalogue."""


# -- conflict ------------------------------------------------------------------------------


class EmailTaken(Conflict):
    """A user with that email exists."""


class ConcurrencyConflict(Conflict):
    """The aggregate kept changing under the command; the caller may try again later."""


# -- invalid -------------------------------------------------------------------------------


class InvalidRequest(Invalid, ValueError):
    """Well-formed but not something this model can do (HTTP 422), naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ContentPolicyViolation(Invalid):
    """A prompt the rules refuse (HTTP 422, code ``content_policy``)."""

    def __init__(self, rule: str, message: str, version: str) -> None:
        super().__init__(f"{message} (rule {rule}, rules {version})")
        self.rule, self.message, self.version = rule, message, version


class InvalidEmail(Invalid, ValueError):
    """Not an email address."""


# -- no category ---------------------------------------------------------------------------


class CatalogueError(PixevoError, ValueError):
    """The model catalogue is broken (a file, or a model it describes): our fault, a 500."""
