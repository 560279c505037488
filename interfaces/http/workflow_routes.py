"""Workflows and their runs, the write side: thin controllers over the workflows use cases.

Reads of the read model (lists, a run, its live events) are in ``workflow_reads``, whose
controllers these extend (Litestar takes one controller per path); here are
the commands, and the reads that only the event store can answer (a run as it stood after its
N-th event, its history) or that serve a stored output.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.types import ControllerRouterHandler
from psycopg_pool import AsyncConnectionPool

from application.ports import BlobStore
from application.users import User
from application.workflows import RunNotFound, WorkflowsApplication
from domain.credits import format_credits
from interfaces.http import workflow_dto as dto
from interfaces.http import workflow_reads
from interfaces.http.generation_routes import IdempotencyKey, require_credits
from interfaces.http.problems import ProblemError
from interfaces.http.ratelimit import RATE_LIMITED

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=5000)]
NodeId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Version = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class CreateWorkflow(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    description: Text = ""


class CreateVersion(msgspec.Struct, forbid_unknown_fields=True):
    graph: dict[str, Any]


class QuoteRun(msgspec.Struct, forbid_unknown_fields=True):
    version: Version | None = None
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)


class CreateRun(msgspec.Struct, forbid_unknown_fields=True):
    version: Version | None = None
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    allow_fallback: bool = True


class ForkRun(msgspec.Struct, forbid_unknown_fields=True):
    from_node: NodeId
    params: dict[str, dict[str, Any]] | None = None
    inputs: dict[str, Any] | None = None


class NodeQuote(msgspec.Struct):
    id: str
    cost_credits: str


class RunQuote(msgspec.Struct):
    cost_credits: str
    nodes: list[NodeQuote]


class WorkflowServices:
    """What the workflow routes use: the write side (opened on first use) and the pool."""

    def __init__(
        self,
        workflows: Callable[[], WorkflowsApplication],
        pool: AsyncConnectionPool,
        blobs: BlobStore,
    ) -> None:
        self._workflows = workflows
        self.pool, self.blobs = pool, blobs

    @property
    def workflows(self) -> WorkflowsApplication:
        return self._workflows()


Services = NamedDependency[WorkflowServices]


class Workflows(workflow_reads.Workflows):
    """The commands on workflows, beside the reads it inherits (one controller a path)."""

    @post("", status_code=201, opt=RATE_LIMITED)
    async def create(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[CreateWorkflow],
        workflow_services: Services,
    ) -> dto.WorkflowView:
        made = await asyncio.to_thread(
            workflow_services.workflows.create_workflow,
            request.user.id,
            data.name,
            data.description,
        )
        return dto.workflow_view(made)

    @post("/{workflow_id:uuid}/versions", status_code=201, opt=RATE_LIMITED)
    async def add_version(
        self,
        request: Request[User, Any, Any],
        workflow_id: FromPath[UUID],
        data: JSONBody[CreateVersion],
        workflow_services: Services,
    ) -> dto.WorkflowVersionView:
        added = await asyncio.to_thread(
            workflow_services.workflows.add_version, request.user.id, workflow_id, data.graph
        )
        return dto.version_view(added)

    @post("/{workflow_id:uuid}/quote", status_code=200)
    async def quote(
        self,
        request: Request[User, Any, Any],
        workflow_id: FromPath[UUID],
        data: JSONBody[QuoteRun],
        workflow_services: Services,
    ) -> RunQuote:
        total, nodes = await asyncio.to_thread(
            workflow_services.workflows.quote,
            request.user.id,
            workflow_id,
            data.version,
            data.inputs,
        )
        return RunQuote(
            cost_credits=format_credits(total),
            nodes=[NodeQuote(id=node, cost_credits=format_credits(u)) for node, u in nodes.items()],
        )

    @post("/{workflow_id:uuid}/runs", status_code=202, opt=RATE_LIMITED)
    async def run(
        self,
        request: Request[User, Any, Any],
        workflow_id: FromPath[UUID],
        data: JSONBody[CreateRun],
        workflow_services: Services,
        idempotency_key: IdempotencyKey = None,
    ) -> dto.RunView:
        workflows = workflow_services.workflows
        if idempotency_key is not None:  # a replay answers the first run, whatever the credits
            replayed = await asyncio.to_thread(
                workflows.replay,
                request.user.id,
                workflow_id,
                data.version,
                data.inputs,
                data.allow_fallback,
                idempotency_key,
            )
            if replayed is not None:
                return dto.run_view(replayed)
        total, _ = await asyncio.to_thread(
            workflows.quote, request.user.id, workflow_id, data.version, data.inputs
        )
        await require_credits(workflow_services.pool, request.user.id, total)
        run, _ = await asyncio.to_thread(
            workflows.start_run,
            request.user.id,
            workflow_id,
            data.version,
            data.inputs,
            data.allow_fallback,
            idempotency_key,
        )
        return dto.run_view(run)


class WorkflowRuns(workflow_reads.WorkflowRuns):
    """The commands on runs, beside the reads it inherits (one controller a path)."""

    @post("/{run_id:uuid}/cancel", status_code=202)
    async def cancel(
        self, request: Request[User, Any, Any], run_id: FromPath[UUID], workflow_services: Services
    ) -> dto.RunView:
        workflows = workflow_services.workflows
        return dto.run_view(await asyncio.to_thread(workflows.cancel, request.user.id, run_id))

    @post("/{run_id:uuid}/nodes/{node:str}/retry", status_code=202)
    async def retry(
        self,
        request: Request[User, Any, Any],
        run_id: FromPath[UUID],
        node: FromPath[str],
        workflow_services: Services,
    ) -> dto.RunView:
        workflows = workflow_services.workflows
        return dto.run_view(await asyncio.to_thread(workflows.retry, request.user.id, run_id, node))

    @post("/{run_id:uuid}/fork", status_code=202, opt=RATE_LIMITED)
    async def fork(
        self,
        request: Request[User, Any, Any],
        run_id: FromPath[UUID],
        data: JSONBody[ForkRun],
        workflow_services: Services,
    ) -> dto.RunView:
        forked = await asyncio.to_thread(
            workflow_services.workflows.fork,
            request.user.id,
            run_id,
            data.from_node,
            data.params,
            data.inputs,
        )
        return dto.run_view(forked)

    @get("/{run_id:uuid}/history")
    async def history(
        self, request: Request[User, Any, Any], run_id: FromPath[UUID], workflow_services: Services
    ) -> dict[str, Any]:
        items = await asyncio.to_thread(
            workflow_services.workflows.history, request.user.id, run_id
        )
        return {"items": items}

    @get("/{run_id:uuid}/nodes/{node:str}/output", media_type="application/octet-stream")
    async def output(
        self,
        request: Request[User, Any, Any],
        run_id: FromPath[UUID],
        node: FromPath[str],
        workflow_services: Services,
    ) -> Response[bytes]:
        run = await asyncio.to_thread(workflow_services.workflows.run, request.user.id, run_id)
        state = run.nodes.get(node)
        if state is None:
            raise RunNotFound(f"no node {node} in run {run_id}")
        output = state["output"]
        if output is None:
            raise ProblemError(404, f"node {node} has no output (it is {state['status']})")
        data = await asyncio.to_thread(workflow_services.blobs.get, str(output["storage_key"]))
        return Response(
            data,
            media_type=str(output["media_type"]),
            headers={"Cache-Control": "private, max-age=31536000, immutable"},
        )


#: Every workflow route, the reads included.
ROUTES: list[ControllerRouterHandler] = [Workflows, WorkflowRuns]
