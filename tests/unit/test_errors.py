"""Every error the application lets reach the HTTP edge answers with its category's status."""

from __future__ import annotations

import importlib
import pkgutil
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from eventsourcing.persistence import OperationalError as StoreUnavailable
from psycopg import OperationalError as DatabaseUnavailable
from redis.exceptions import ConnectionError as RedisUnavailable

from application.billing import AccountNotFound
from application.catalogue import CatalogueError, UnknownModel
from application.errors import (
    Conflict,
    Forbidden,
    InsufficientFunds,
    Invalid,
    NotFound,
    PixevoError,
    TooLarge,
    Unavailable,
)
from application.generations import GenerationNotFound, IdempotencyConflict
from application.imaging import ClassifierUnavailable
from application.marketplace import (
    CopyNotListable,
    InstallNotFound,
    ListingNotFound,
    NotInstalled,
)
from application.moderation import ContentPolicyViolation
from application.normalise import InvalidRequest
from application.ports import CircuitOpen
from application.retry import ConcurrencyConflict
from application.uploads import ImageTooLarge, NotAnImage, UploadNotFound
from application.users import EmailTaken, InvalidEmail
from application.webhooks import EndpointNotFound
from application.workflow_graph import InvalidGraph
from application.workflow_ops import LocalOpError
from application.workflows import IdempotencyConflict as RunKeyConflict
from application.workflows import RunNotFound, WorkflowNotFound
from domain.errors import DomainError, HoldClosed, InsufficientCredits, InvalidAmount, UnknownHold
from domain.generation import GenerationFinished
from domain.marketplace import AlreadyRefunded, ListingClosed, OwnListing
from domain.webhook import EndpointDeleted
from domain.workflow import RunFinished
from infrastructure.tokens import InvalidStreamToken
from interfaces.http import problems
from projections.ledger_queries import BadCursor

CATEGORIES = (NotFound, Conflict, Invalid, InsufficientFunds, Unavailable, Forbidden, TooLarge)

#: Every error class we raise on purpose, and the status it must answer with.
EXPECTED: dict[type[Exception], int] = {
    AccountNotFound: 404,
    UnknownModel: 404,
    GenerationNotFound: 404,
    UploadNotFound: 404,
    WorkflowNotFound: 404,
    EndpointNotFound: 404,
    EndpointDeleted: 409,
    RunNotFound: 404,
    UnknownHold: 404,
    EmailTaken: 409,
    IdempotencyConflict: 409,
    ConcurrencyConflict: 409,
    GenerationFinished: 409,
    RunFinished: 409,
    RunKeyConflict: 409,
    HoldClosed: 409,
    ListingClosed: 409,
    OwnListing: 409,
    AlreadyRefunded: 409,
    NotInstalled: 409,
    CopyNotListable: 409,
    ListingNotFound: 404,
    InstallNotFound: 404,
    InvalidRequest: 422,
    ContentPolicyViolation: 422,
    InvalidEmail: 422,
    InvalidAmount: 422,
    BadCursor: 422,
    NotAnImage: 422,
    InvalidGraph: 422,
    LocalOpError: 422,
    ImageTooLarge: 413,
    InsufficientCredits: 402,
    CircuitOpen: 503,
    ClassifierUnavailable: 503,
    InvalidStreamToken: 403,
    CatalogueError: 500,  # a broken catalogue is our fault
}

#: The libraries' "cannot reach it" errors.
LIBRARY: dict[type[Exception], int] = {
    StoreUnavailable: 503,
    DatabaseUnavailable: 503,
    RedisUnavailable: 503,
}

REQUEST: Any = SimpleNamespace(url=SimpleNamespace(path="/v1/test"))


def make(cls: type[Exception]) -> Exception:
    if cls is InsufficientCredits:
        return InsufficientCredits(requested=5, available=2)
    if cls in (InvalidRequest, LocalOpError):
        return cls("params.seed", "an integer")
    if cls is InvalidGraph:
        return InvalidGraph([("nodes.a.op", "unknown"), ("nodes.b.inputs.image", "required")])
    if cls is ContentPolicyViolation:
        return ContentPolicyViolation("r1", "not allowed", "v3")
    return cls(f"a {cls.__name__}")


def answer(exc: Exception) -> tuple[int, dict[str, Any]]:
    response = problems.handle(REQUEST, exc)
    body = msgspec.to_builtins(response.content)
    assert body["status"] == response.status_code
    return response.status_code, body


def every_subclass(cls: type[Exception]) -> set[type[Exception]]:
    found: set[type[Exception]] = set()
    for sub in cls.__subclasses__():
        found |= {sub} | every_subclass(sub)
    return found


@pytest.mark.parametrize(
    ("cls", "status"), [pytest.param(cls, code, id=cls.__name__) for cls, code in EXPECTED.items()]
)
def test_each_error_answers_its_categorys_status(cls: type[Exception], status: int) -> None:
    assert answer(make(cls))[0] == status


def test_an_invalid_graph_names_every_problem() -> None:
    status, body = answer(make(InvalidGraph))
    assert status == 422
    assert [e["field"] for e in body["errors"]] == ["nodes.a.op", "nodes.b.inputs.image"]


@pytest.mark.parametrize("cls", LIBRARY, ids=lambda cls: cls.__module__ + "." + cls.__name__)
def test_an_unreachable_dependency_is_a_503_that_says_so(cls: type[Exception]) -> None:
    status, body = answer(cls("connection refused"))
    assert status == 503
    assert "connection refused" not in body["detail"]


def test_the_mapping_is_by_category_not_by_class() -> None:
    assert set(problems.STATUS_FOR) == set(CATEGORIES)

    class Newcomer(Conflict):
        pass

    assert answer(Newcomer("a new error, no edit at the edge"))[0] == 409


def test_an_unmapped_exception_is_a_500_that_hides_its_message() -> None:
    status, body = answer(RuntimeError("secret internals"))
    assert status == 500
    assert "secret internals" not in body["detail"]
    assert answer(PixevoError("no category"))[0] == 500


def test_a_body_too_deep_to_decode_is_the_clients_400_and_our_own_recursion_a_500() -> None:
    too_deep = RecursionError("maximum recursion depth exceeded while deserializing an object")
    status, body = answer(too_deep)
    assert (status, body["detail"]) == (400, "the JSON body is nested too deeply")
    assert answer(RecursionError("maximum recursion depth exceeded"))[0] == 500


def test_every_error_we_define_is_in_one_category_and_expected_here() -> None:
    for package in ("domain", "application", "projections", "infrastructure", "interfaces"):
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            if module.name.endswith("__main__"):
                continue
            importlib.import_module(module.name)
    defined = {
        cls
        for cls in every_subclass(PixevoError)
        if cls.__module__.split(".")[0] != "tests" and cls not in CATEGORIES
    }
    assert defined - {DomainError} == set(EXPECTED)
    for cls in defined - {CatalogueError, DomainError}:
        assert sum(issubclass(cls, category) for category in CATEGORIES) == 1, cls


def test_bodies_that_name_the_field_or_the_rule_are_kept() -> None:
    _, invalid = answer(make(InvalidRequest))
    assert invalid["errors"] == [{"field": "params.seed", "message": "an integer"}]
    assert invalid["detail"] == "an integer"
    _, refused = answer(make(ContentPolicyViolation))
    assert (refused["type"], refused["code"], refused["rule"], refused["rules_version"]) == (
        "/problems/content-policy",
        "content_policy",
        "r1",
        "v3",
    )
    _, problem = answer(problems.ProblemError(429, "slow down", headers={"Retry-After": "3"}))
    assert (problem["status"], problem["detail"]) == (429, "slow down")
