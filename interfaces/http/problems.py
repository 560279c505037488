"""The one place where errors become HTTP problem details (RFC 9457).

Every error category maps to one status; anything a client sent gets a 4xx saying what is
wrong. A 500 is reserved for our own faults, and is logged with the request's context.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from eventsourcing.persistence import OperationalError as StoreUnavailable
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from psycopg import OperationalError as DatabaseUnavailable
from redis.exceptions import ConnectionError as RedisUnavailable

from application.errors import (
    Conflict,
    ContentPolicyViolation,
    Forbidden,
    InsufficientFunds,
    Invalid,
    InvalidRequest,
    NotFound,
    PixevoError,
    TooLarge,
    Unavailable,
)
from application.workflow_graph import InvalidGraph

log = structlog.get_logger(__name__)
MEDIA_TYPE = "application/problem+json"

TITLES = {
    400: "Malformed request",
    401: "Unauthorized",
    402: "Insufficient credits",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}

#: Each category of our errors (see ``application/errors.py``) and the status it answers with.
#: An error of none of them is our fault: a 500.
STATUS_FOR: dict[type[PixevoError], int] = {
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    InsufficientFunds: 402,
    Unavailable: 503,
    Forbidden: 403,
    TooLarge: 413,
}

#: The libraries' own "cannot reach it" errors, answered like an :class:`Unavailable`. They are
#: recognised here rather than translated where they are raised: every query, append and publish
#: can raise them, and one tuple at the edge is the whole translation.
LIBRARY_UNAVAILABLE: tuple[type[Exception], ...] = (
    StoreUnavailable,
    DatabaseUnavailable,
    RedisUnavailable,
)


def status_for(exc: Exception) -> int | None:
    """The status of ``exc``'s category (its most specific one), if it has one."""
    for cls in type(exc).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return 503 if isinstance(exc, LIBRARY_UNAVAILABLE) else None


class FieldError(msgspec.Struct):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None
    #: A machine-readable reason where clients act on it (e.g. ``content_policy``).
    code: str | None = None
    rule: str | None = None
    rules_version: str | None = None


class ProblemError(Exception):
    """Raised by handlers for a problem with no better-named error class."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


def problem_response(
    status: int,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    title = TITLES.get(status, "Error")
    slug = title.lower().replace(" ", "-")
    if status == 503:
        headers = {"Retry-After": "5", **(headers or {})}
    return Response(
        Problem(type=f"/problems/{slug}", title=title, status=status, detail=detail, errors=errors),
        status_code=status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def _validation_errors(extra: Any) -> list[FieldError]:
    errors = []
    for item in extra if isinstance(extra, list) else []:
        if isinstance(item, dict):
            field = str(item.get("key") or item.get("source") or "body")
            errors.append(FieldError(field=field, message=str(item.get("message", "invalid"))))
    return errors


def _too_deep(exc: Exception) -> bool:
    """msgspec gives up on a body nested deeper than it recurses: the client's doing."""
    return isinstance(exc, RecursionError) and "while deserializing" in str(exc)


def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:  # noqa: PLR0911
    if _too_deep(exc):
        return problem_response(400, "the JSON body is nested too deeply")
    if isinstance(exc, ProblemError):
        return problem_response(exc.status, exc.detail, errors=exc.errors, headers=exc.headers)
    if isinstance(exc, InvalidGraph):
        fields = [FieldError(field, message) for field, message in exc.problems]
        return problem_response(422, str(exc), errors=fields)
    if isinstance(exc, InvalidRequest):
        return problem_response(422, exc.message, errors=[FieldError(exc.field, exc.message)])
    if isinstance(exc, ContentPolicyViolation):
        log.info("moderation.prompt_refused", rule=exc.rule, rules_version=exc.version)
        return Response(
            Problem(
                type="/problems/content-policy",
                title="Content policy",
                status=422,
                detail=exc.message,
                errors=[FieldError("prompt", exc.message)],
                code="content_policy",
                rule=exc.rule,
                rules_version=exc.version,
            ),
            status_code=422,
            media_type=MEDIA_TYPE,
        )
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc.extra)
        detail = errors[0].message if errors else str(exc.detail)
        return problem_response(400, detail, errors=errors or None)
    if isinstance(exc, HTTPException):
        status = exc.status_code if exc.status_code < 500 else 503
        return problem_response(status, str(exc.detail), headers=exc.headers)
    category_status = status_for(exc)
    if category_status is not None:
        if category_status >= 500:
            log.warning("dependency.unavailable", error=str(exc))
            return problem_response(
                category_status, "a dependency is unavailable; try again shortly"
            )
        return problem_response(category_status, str(exc))
    log.exception("request.failed", path=request.url.path)
    return problem_response(500, "an internal error occurred; it has been logged")
