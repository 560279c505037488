"""The read side's workflow and run shapes (what ``application.workflow_views`` renders), for
the OpenAPI document and the responses."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec


class WorkflowView(msgspec.Struct):
    id: UUID
    name: str
    description: str
    owner_id: UUID
    latest_version: int | None
    source: dict[str, Any] | None
    created_at: datetime


class WorkflowList(msgspec.Struct):
    items: list[WorkflowView]
    next_cursor: str | None


class WorkflowVersionView(msgspec.Struct):
    workflow_id: UUID
    version: int
    graph: dict[str, Any]
    created_at: datetime


class RunNode(msgspec.Struct):
    id: str
    op: str
    status: str
    attempts: int
    generation_id: UUID | None
    output: dict[str, Any] | None
    cached: bool
    fallback_from: str | None
    error: dict[str, Any] | None
    cost_credits: str
    charged_credits: str
    started_at: datetime | None
    completed_at: datetime | None
    reused_from: UUID | None = None


class RunLinks(msgspec.Struct):
    self: str
    events: str


class RunView(msgspec.Struct):
    id: UUID
    workflow_id: UUID
    version: int
    status: str
    inputs: dict[str, Any]
    cost_credits: str
    charged_credits: str
    progress: float
    nodes: list[RunNode]
    outputs: dict[str, Any] | None
    error: dict[str, Any] | None
    forked_from: dict[str, Any] | None
    created_at: datetime
    completed_at: datetime | None
    links: RunLinks
    cancel_requested: bool = False


class RunList(msgspec.Struct):
    items: list[RunView]
    next_cursor: str | None


def run_view(doc: dict[str, Any]) -> RunView:
    return msgspec.convert(doc, RunView)


def workflow_view(doc: dict[str, Any]) -> WorkflowView:
    return msgspec.convert(doc, WorkflowView)


def version_view(doc: dict[str, Any]) -> WorkflowVersionView:
    return msgspec.convert(doc, WorkflowVersionView)
