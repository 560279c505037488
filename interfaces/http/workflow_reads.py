"""The workflows' and runs' reads: thin handlers over the workflows projection's queries.

A workflow or run just created (or a copy just installed) may not be projected yet: its
``GET`` then asks the write side, through the ``workflow_from_write_side`` and
``run_from_write_side`` dependencies (raising a ``NotFound``), so this module never imports the
application.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter
from litestar.types import ControllerRouterHandler
from psycopg_pool import AsyncConnectionPool

from application.users import User
from interfaces.http import workflow_dto as dto
from interfaces.http.auth import STREAM_OPT, TokenQuery
from interfaces.http.feed_routes import LastEventId, LastEventIdQuery, event_position
from interfaces.http.problems import ProblemError
from interfaces.http.run_streams import open_run
from interfaces.http.sse import sse_response
from interfaces.http.streams import LiveFeeds
from projections import workflow_queries
from projections.ledger_queries import BadCursor

RunFromWriteSide = Callable[[UUID, UUID], dict[str, Any]]
#: (user, workflow, version or None) -> the workflow's (or that version's) document from the
#: write side; ``None`` for a version it does not have; a workflow not the user's raises NotFound.
WorkflowFromWriteSide = Callable[[UUID, UUID, int | None], dict[str, Any] | None]
#: (user, run, N) -> the run as it stood after its N-th event (the event store answers).
RunAtEvent = Callable[[UUID, UUID, int], dict[str, Any]]
Limit = Annotated[int, Parameter(ge=1, le=200)]
Cursor = Annotated[str | None, Parameter(max_length=200)]


class Workflows(Controller):
    path = "/v1/workflows"

    @get("")
    async def workflows(
        self,
        request: Request[User, Any, Any],
        pool: NamedDependency[AsyncConnectionPool],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dto.WorkflowList:
        try:
            docs, next_cursor = await workflow_queries.workflows(
                pool, request.user.id, limit, cursor
            )
        except BadCursor as bad:
            raise ProblemError(400, str(bad)) from None
        return dto.WorkflowList([dto.workflow_view(d) for d in docs], next_cursor)

    @get("/{workflow_id:uuid}")
    async def workflow(
        self,
        request: Request[User, Any, Any],
        workflow_id: FromPath[UUID],
        pool: NamedDependency[AsyncConnectionPool],
        workflow_from_write_side: NamedDependency[WorkflowFromWriteSide],
    ) -> dto.WorkflowView:
        doc = await workflow_queries.workflow(pool, request.user.id, workflow_id)
        if doc is None:  # not projected yet (just made, or just installed): the write side
            doc = await asyncio.to_thread(
                workflow_from_write_side, request.user.id, workflow_id, None
            )
        if doc is None:
            raise ProblemError(404, f"no workflow {workflow_id}")
        return dto.workflow_view(doc)

    @get("/{workflow_id:uuid}/versions/{number:int}")
    async def version(
        self,
        request: Request[User, Any, Any],
        workflow_id: FromPath[UUID],
        number: FromPath[int],
        pool: NamedDependency[AsyncConnectionPool],
        workflow_from_write_side: NamedDependency[WorkflowFromWriteSide],
    ) -> dto.WorkflowVersionView:
        user_id = request.user.id
        doc = await workflow_queries.version(pool, user_id, workflow_id, number)
        if doc is None:
            doc = await asyncio.to_thread(workflow_from_write_side, user_id, workflow_id, number)
        if doc is None:
            raise ProblemError(404, f"workflow {workflow_id} has no version {number}")
        return dto.version_view(doc)


class WorkflowRuns(Controller):
    path = "/v1/workflow-runs"

    @get("")
    async def runs(
        self,
        request: Request[User, Any, Any],
        pool: NamedDependency[AsyncConnectionPool],
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> dto.RunList:
        try:
            docs, next_cursor = await workflow_queries.runs(pool, request.user.id, limit, cursor)
        except BadCursor as bad:
            raise ProblemError(400, str(bad)) from None
        return dto.RunList([dto.run_view(d) for d in docs], next_cursor)

    @get("/{run_id:uuid}")
    async def run(
        self,
        request: Request[User, Any, Any],
        run_id: FromPath[UUID],
        pool: NamedDependency[AsyncConnectionPool],
        run_from_write_side: NamedDependency[RunFromWriteSide],
        run_at_event: NamedDependency[RunAtEvent],
        at: Annotated[int | None, Parameter(ge=1, le=1_000_000)] = None,
    ) -> dto.RunView:
        if at is not None:  # the run as it stood after its at-th event: the event store's
            return dto.run_view(await asyncio.to_thread(run_at_event, request.user.id, run_id, at))
        doc = await workflow_queries.run(pool, request.user.id, run_id)
        if doc is None:  # not projected yet: the write side answers (or 404s)
            doc = await asyncio.to_thread(run_from_write_side, request.user.id, run_id)
        return dto.run_view(doc)

    @get("/{run_id:uuid}/events", opt=STREAM_OPT)
    async def events(
        self,
        request: Request[User, Any, Any],
        run_id: FromPath[UUID],
        feeds: NamedDependency[LiveFeeds],
        last_event_id: LastEventId = None,
        last_event_id_query: LastEventIdQuery = None,
        token: TokenQuery = None,  # noqa: ARG002 - read by the authentication middleware
    ) -> Response[Any]:
        """Server-Sent Events of the run: ``workflow_run.status`` (the run's status and
        ``progress`` with the nodes that changed), ``node_progress`` of its running provider
        nodes, and a final ``workflow_run.<status>`` carrying the run. Event ids are positions
        in the workflows log."""
        last = event_position(last_event_id, last_event_id_query)
        stream, done = await open_run(feeds, request.user.id, run_id, last)
        if done:  # 204 tells an EventSource to stop reconnecting
            return Response(None, status_code=204)
        return sse_response(stream)


ROUTES: list[ControllerRouterHandler] = [Workflows, WorkflowRuns]
