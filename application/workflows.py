"""The workflows context's application (a minimal stand-in: the commands and reactions come
with the engine; the read side needs its name, its log and a run's document)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import PixevoApplication
from application.workflow_views import run_document
from domain.errors import NotFound
from domain.workflow import WorkflowExecution


class RunNotFound(NotFound, LookupError):
    """No such run, or not the caller's (HTTP 404)."""


class WorkflowsApplication(PixevoApplication):
    name = "workflows"

    def run_document(self, user_id: UUID, run_id: UUID) -> dict[str, Any]:
        """The run's document from its aggregate (a read right after the create)."""
        try:
            run: object = self.repository.get(run_id)
        except AggregateNotFoundError:
            raise RunNotFound(f"no workflow run {run_id}") from None
        if not isinstance(run, WorkflowExecution) or run.user_id != user_id:
            raise RunNotFound(f"no workflow run {run_id}")
        return run_document(run)
