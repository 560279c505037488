"""The workflow context: templates with versioned graphs, and their runs.

Every method is a use case. A run is created ``queued`` with its graph pinned, its inputs
resolved and each node quoted; the reactions in :mod:`application.workflow_reactions` fund it,
start its nodes, follow their generations and settle it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import Recording, Tracking

from application import tracing
from application.base import PixevoApplication, command
from application.catalogue import UnknownModel
from application.errors import Conflict, InvalidRequest, NotFound
from application.generations import GenerationsApplication
from application.inputs import ImageInput
from application.locks import KeyedLocks
from application.normalise import GenerationRequest, Normalised
from application.retry import retry_on_conflict
from application.text import NUL_MESSAGE, nul_paths
from application.workflow_graph import (
    InvalidGraph,
    NodePlan,
    plan,
    run_values,
    validate_shape,
)
from application.workflow_views import run_document, template_document, version_document
from domain.generation import IdempotencyKey
from domain.ids import uuid7
from domain.workflow import (
    LOCAL_OPS,
    Deadline,
    WorkflowExecution,
    WorkflowTemplate,
    downstream,
    fold,
)

#: How long a local op may take before its node fails (it is seconds of pixel work).
LOCAL_NODE_LIMIT = timedelta(minutes=5)
MAX_NAME = 200
MAX_DESCRIPTION = 5000
_KEY_NAMESPACE = uuid5(NAMESPACE_URL, "pixevo:workflow-run-idempotency")


class WorkflowNotFound(NotFound, LookupError):
    pass


@dataclass(frozen=True, slots=True)
class InstalledCopy:
    """A buyer's copy of a listed workflow version (``workflow_id``), made by an install."""

    workflow_id: UUID
    owner_id: UUID
    name: str
    description: str
    source_workflow_id: UUID
    version: int
    listing_id: UUID
    install_id: UUID

    def source(self) -> dict[str, Any]:
        return {
            "listing_id": str(self.listing_id),
            "install_id": str(self.install_id),
            "version": self.version,
        }


class RunNotFound(NotFound, LookupError):
    pass


class IdempotencyConflict(Conflict):
    """The same ``Idempotency-Key`` with a different run request (HTTP 409)."""


def _run_hash(workflow_id: UUID, version: int | None, given: Any, allow_fallback: bool) -> str:
    """What an ``Idempotency-Key`` of a run is bound to: the request as the client sent it."""
    asked = [str(workflow_id), version, given, allow_fallback]
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()


class WorkflowsApplication(PixevoApplication):
    name = "workflows"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        generations: GenerationsApplication | None = None,
        provider_allowance: timedelta = timedelta(hours=1, minutes=2),
    ) -> None:
        """``generations``: quotes and resolves like any generation request does;
        ``provider_allowance``: how long past its model's own limit a provider node may wait
        (deferrals and the margin of the generation's own deadlines)."""
        super().__init__(env)
        self.generations = generations or GenerationsApplication()
        self.catalogue = self.generations.catalogue
        self.provider_allowance = provider_allowance
        self._turns = KeyedLocks()

    # -- templates -------------------------------------------------------------------------

    @command
    def create_workflow(
        self,
        owner_id: UUID,
        name: str,
        description: str = "",
        source: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        problems = [
            (field, NUL_MESSAGE)
            for field in nul_paths({"name": name, "description": description}, "")
        ]
        if not name.strip() or len(name) > MAX_NAME:
            problems.append(("name", f"1 to {MAX_NAME} characters"))
        if len(description) > MAX_DESCRIPTION:
            problems.append(("description", f"at most {MAX_DESCRIPTION} characters"))
        if problems:
            raise InvalidGraph(problems)
        template = WorkflowTemplate.create(uuid7(), owner_id, name.strip(), description, source)
        self.save(template)
        return template_document(template)

    @command
    def add_version(self, owner_id: UUID, workflow_id: UUID, graph: Any) -> dict[str, Any]:
        """Validates ``graph`` whole (every problem at once) and adds it as the next version."""
        template = self.template(owner_id, workflow_id)
        problems = validate_shape(graph)
        if problems:
            raise InvalidGraph(problems)
        self.plan(graph, {}, {})  # params through the models' normalisation, with stand-ins
        version = template.add_version(graph)
        self.save(template)
        return version_document(workflow_id, version, template.versions[version])

    @command
    def install_copy(self, copy: InstalledCopy) -> dict[str, Any]:
        """The buyer's own copy of a listed version (made once: its id is the install's)."""
        try:
            return template_document(self.load(copy.workflow_id, WorkflowTemplate))
        except AggregateNotFoundError:
            pass
        _, graph = self.graph_of(self.template(None, copy.source_workflow_id), copy.version)
        template = WorkflowTemplate.create(
            copy.workflow_id, copy.owner_id, copy.name, copy.description, copy.source()
        )
        template.add_version(graph)
        self.save(template)
        return template_document(template)

    @command
    def follow_listing(self, copy: InstalledCopy) -> dict[str, Any]:
        """An installed copy takes the listing's newer version ``copy.version`` as its own next
        version (runs already started keep the graph they pinned); no change if it has it."""
        self.install_copy(copy)
        template = self.template(copy.owner_id, copy.workflow_id)
        if (template.source or {}).get("version", 0) < copy.version:
            _, graph = self.graph_of(self.template(None, copy.source_workflow_id), copy.version)
            template.follow_source(copy.source(), graph)
            self.save(template)
        return template_document(template)

    def template(self, owner_id: UUID | None, workflow_id: UUID) -> WorkflowTemplate:
        try:
            template = self.load(workflow_id, WorkflowTemplate)
        except (AggregateNotFoundError, TypeError):
            raise WorkflowNotFound(f"no workflow {workflow_id}") from None
        if owner_id is not None and template.owner_id != owner_id:
            raise WorkflowNotFound(f"no workflow {workflow_id}")
        return template

    def workflow_document(
        self, owner_id: UUID, workflow_id: UUID, version: int | None = None
    ) -> dict[str, Any] | None:
        """The workflow, or one version of it (``None`` if it has no such version), as the
        write side has it: for a read the projection cannot answer yet."""
        template = self.template(owner_id, workflow_id)
        if version is None:
            return template_document(template)
        entry = template.versions.get(version)
        return version_document(workflow_id, version, entry) if entry else None

    def graph_of(self, template: WorkflowTemplate, version: int | None) -> tuple[int, Any]:
        chosen = version if version is not None else template.latest_version
        if chosen is None:
            raise InvalidRequest("version", "this workflow has no version yet")
        if chosen not in template.versions:
            raise InvalidRequest("version", f"no version {chosen}")
        return chosen, template.versions[chosen]["graph"]

    # -- planning and quoting --------------------------------------------------------------

    def plan(
        self, graph: Any, values: Mapping[str, Any], images: Mapping[str, ImageInput]
    ) -> dict[str, NodePlan]:
        return plan(graph, self.catalogue, self._quote, values, images)

    def _quote(self, request: GenerationRequest, inputs: Mapping[str, ImageInput]) -> Normalised:
        return self.generations.quote(request, inputs=inputs)

    def _resolve_inputs(
        self, user_id: UUID, graph: Any, given: Any
    ) -> tuple[dict[str, Any], dict[str, ImageInput]]:
        values, references = run_values(graph, given)
        images = {
            name: self.generations.inputs.resolve(user_id, f"inputs.{name}", reference)
            for name, reference in references.items()
        }
        return values, images

    def quote(
        self, user_id: UUID, workflow_id: UUID, version: int | None, given: Any
    ) -> tuple[int, dict[str, int]]:
        template = self.template(user_id, workflow_id)
        _, graph = self.graph_of(template, version)
        values, images = self._resolve_inputs(user_id, graph, given)
        plans = self.plan(graph, values, images)
        quotes = {node: plans[node].quote for node in plans}
        return sum(quotes.values()), quotes

    # -- runs --------------------------------------------------------------------------------

    @command
    def start_run(
        self,
        user_id: UUID,
        workflow_id: UUID,
        version: int | None,
        given: Any,
        allow_fallback: bool = True,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """A new run, ``queued`` until its funding round is held: ``(run, True)`` when new."""
        template = self.template(user_id, workflow_id)
        request_hash = _run_hash(workflow_id, version, given, allow_fallback)
        run_id = uuid7()
        claim = self._claim(user_id, idempotency_key, run_id, request_hash)
        if isinstance(claim, dict):
            return claim, False
        chosen, graph = self.graph_of(template, version)
        values, images = self._resolve_inputs(user_id, graph, given)
        plans = self.plan(graph, values, images)
        run = WorkflowExecution.request(
            run_id=run_id,
            user_id=user_id,
            workflow_id=workflow_id,
            workflow_version=chosen,
            graph=graph,
            inputs={**values, **{name: image.record() for name, image in images.items()}},
            quotes={node: plans[node].quote for node in plans},
            allow_fallback=allow_fallback,
        )
        self.save(run, *([claim] if claim is not None else []))
        return run_document(run), True

    def replay(
        self,
        user_id: UUID,
        workflow_id: UUID,
        version: int | None,
        given: Any,
        allow_fallback: bool,
        idempotency_key: str,
    ) -> dict[str, Any] | None:
        """The run an earlier request with this ``Idempotency-Key`` made, while the key is live
        (``None``: the request is new); the same key with another request: 409."""
        request_hash = _run_hash(workflow_id, version, given, allow_fallback)
        found = self._claim(user_id, idempotency_key, uuid7(), request_hash)
        return found if isinstance(found, dict) else None

    def _claim(
        self, user_id: UUID, key: str | None, run_id: UUID, request_hash: str
    ) -> IdempotencyKey | dict[str, Any] | None:
        """The key's claim to save with the new run, or the run an earlier request made."""
        if key is None:
            return None
        key_id = uuid5(_KEY_NAMESPACE, f"{user_id}:{key}")
        try:
            existing = self.load(key_id, IdempotencyKey)
        except AggregateNotFoundError:
            return IdempotencyKey._create(
                IdempotencyKey.Claimed, id=key_id, generation_id=run_id, request_hash=request_hash
            )
        if existing.expired(datetime.now(UTC)):
            existing.reclaim(run_id, request_hash)
            return existing
        if existing.request_hash != request_hash:
            raise IdempotencyConflict("this Idempotency-Key was used with a different request")
        # ``generation_id`` is what the key made: here, a run
        return run_document(self.run(user_id, existing.generation_id))

    @command
    def fork(
        self,
        user_id: UUID,
        run_id: UUID,
        from_node: str,
        params: Any = None,
        given: Any = None,
    ) -> dict[str, Any]:
        """A new run of the same version that reuses the stored output of every completed node
        not at or below ``from_node``, with changed ``params`` (by node) and ``inputs``."""
        source = self.run(user_id, run_id)
        if from_node not in source.nodes:
            raise InvalidRequest("from_node", f"no node {from_node!r} in this run")
        rerun = {from_node} | downstream(source.graph, [from_node])
        changes = params or {}
        if not isinstance(changes, Mapping):
            raise InvalidRequest("params", "an object of params by node id")
        for field in nul_paths(changes, "params"):
            raise InvalidRequest(field, NUL_MESSAGE)
        for node in changes:
            if node not in rerun:
                raise InvalidRequest(
                    f"params.{node}", f"not {from_node} or downstream of it: it is reused as is"
                )
        graph = json.loads(json.dumps(source.graph))
        for spec in graph["nodes"]:
            change = changes.get(spec["id"])
            if change is not None:
                if not isinstance(change, Mapping):
                    raise InvalidRequest(f"params.{spec['id']}", "an object of params")
                spec["params"] = {**(spec.get("params") or {}), **change}
        earlier = {
            name: value.get("reference") if isinstance(value, dict) else value
            for name, value in source.inputs.items()
        }
        if given is not None and not isinstance(given, Mapping):
            raise InvalidRequest("inputs", "an object of input values")
        values, images = self._resolve_inputs(user_id, graph, {**earlier, **(given or {})})
        plans = self.plan(graph, values, images)
        reused = {
            node: state["output"]
            for node, state in source.nodes.items()
            if node not in rerun and state["status"] == "completed"
        }
        run = WorkflowExecution.request(
            run_id=uuid7(),
            user_id=user_id,
            workflow_id=source.workflow_id,
            workflow_version=source.workflow_version,
            graph=graph,
            inputs={**values, **{name: image.record() for name, image in images.items()}},
            quotes={node: 0 if node in reused else plans[node].quote for node in plans},
            allow_fallback=source.allow_fallback,
            forked_from={"run_id": str(run_id), "node": from_node},
            reused=reused,
        )
        self.save(run)
        return run_document(run)

    @command
    def cancel(self, user_id: UUID, run_id: UUID) -> dict[str, Any]:
        run = self.run(user_id, run_id)
        run.request_cancel()
        self.save(run)
        return run_document(run)

    @command
    def retry(self, user_id: UUID, run_id: UUID, node: str) -> dict[str, Any]:
        run = self.run(user_id, run_id)
        if node not in run.nodes:
            raise RunNotFound(f"no node {node} in run {run_id}")
        run.retry(node, self.deadline_for(run))
        self.save(run)
        return run_document(run)

    def _notify(self, recordings: list[Recording[UUID]]) -> None:
        """A span per node and one for the run, recorded as they end, in the trace the run was
        requested in (a run's nodes run in many messages: no one span is open throughout)."""
        super()._notify(recordings)
        if not tracing.exporting():
            return
        for recording in recordings:
            event = recording.domain_event
            if isinstance(event, WorkflowExecution.NodeCompleted | WorkflowExecution.NodeFailed):
                self._node_span(event)
            elif isinstance(event, WorkflowExecution.Ended):
                self._run_span(event)

    def _requested(self, run_id: UUID) -> Any:
        return next(iter(self.events.get(run_id, lte=1)))

    def _node_span(self, event: Any) -> None:
        run = self.run(None, event.originator_id)
        node = run.nodes[event.node]
        failed = isinstance(event, WorkflowExecution.NodeFailed)
        tracing.record_span(
            f"workflow.node {event.node}",
            tracing.context_of(self._requested(run.id)),
            node.get("started_at") or getattr(event, "started_at", None) or event.timestamp,
            event.timestamp,
            {
                "pixevo.workflow_run_id": str(run.id),
                "pixevo.node": event.node,
                "pixevo.op": run.spec(event.node)["op"],
                "pixevo.attempt": event.attempt,
                "pixevo.generation_id": str(node["generation_id"])
                if node.get("generation_id")
                else None,
            },
            error=f"{event.code}: {event.message}" if failed else None,
        )

    def _run_span(self, event: Any) -> None:
        requested = self._requested(event.originator_id)
        tracing.record_span(
            "workflow.run",
            tracing.context_of(requested),
            requested.timestamp,
            event.timestamp,
            {"pixevo.workflow_run_id": str(event.originator_id), "pixevo.status": event.status},
            error=None if event.status == "completed" else event.status,
        )

    def change(
        self,
        run_id: UUID,
        change: Callable[[WorkflowExecution], object],
        tracking: Tracking | None = None,
    ) -> bool:
        """Loads the run, applies ``change`` and saves it (with ``tracking``, when a reaction's;
        ``False`` when that event was handled before). The nodes of one run finish together:
        this process's threads take turns on a run instead of conflicting, and conflicts with
        other processes are retried."""

        def record() -> bool:  # a tracked event handled before: save_tracked finds it
            run = self.run(None, run_id)
            change(run)
            if tracking is None:
                self.save(run)
                return True
            return self.save_tracked(tracking, run)

        with self._turns(run_id):
            return bool(retry_on_conflict(record)())

    @command
    def expire(self, run_id: UUID, now: datetime) -> tuple[UUID, list[UUID]]:
        """Ends what of the run is past its deadline (see :meth:`WorkflowExecution.expire`);
        returns the run's user and the generations of the nodes that failed, to be cancelled
        at their providers."""
        run = self.run(None, run_id)
        abandoned = [run.nodes[node]["generation_id"] for node in run.expire(now)]
        self.save(run)
        return run.user_id, abandoned

    def deadline_for(self, run: WorkflowExecution) -> Deadline:
        """Each node's deadline if queued now: a local op's fixed limit; a provider node's
        model's total time plus the allowance its generation may wait."""
        now = datetime.now(UTC)

        def deadline(node: str) -> datetime:
            spec = run.spec(node)
            if spec["op"] in LOCAL_OPS:
                return now + LOCAL_NODE_LIMIT
            try:
                total = self.catalogue.get(str(spec["params"]["model"])).timeouts.total_s
            except (UnknownModel, KeyError):
                total = 600
            return now + timedelta(seconds=total) + self.provider_allowance

        return deadline

    # -- reading the write side ---------------------------------------------------------------

    def run(self, user_id: UUID | None, run_id: UUID) -> WorkflowExecution:
        try:
            run = self.load(run_id, WorkflowExecution)
        except (AggregateNotFoundError, TypeError):
            raise RunNotFound(f"no workflow run {run_id}") from None
        if user_id is not None and run.user_id != user_id:
            raise RunNotFound(f"no workflow run {run_id}")
        return run

    def run_version(self, run_id: UUID, version: int) -> WorkflowExecution:
        """The run as it stood after its ``version``-th event."""
        run: object = self.repository.get(run_id, version=version)
        if not isinstance(run, WorkflowExecution):
            raise RunNotFound(f"no workflow run {run_id}")
        return run

    def run_document(self, user_id: UUID, run_id: UUID) -> dict[str, Any]:
        """The run from the write side (read-your-writes, before the projection has it)."""
        return run_document(self.run(user_id, run_id))

    def run_at(self, user_id: UUID, run_id: UUID, at: int) -> dict[str, Any]:
        """The run as it stood after its ``at``-th event."""
        self.run(user_id, run_id)
        if at < 1:
            raise InvalidRequest("at", "an event number, from 1")
        state: Any = None
        for event in self.events.get(run_id, lte=at):
            state = fold(state, event)
        document = run_document(state)
        document["at"] = min(at, self._count(run_id))
        return document

    def _count(self, run_id: UUID) -> int:
        return len(list(self.events.get(run_id)))

    def history(self, user_id: UUID, run_id: UUID) -> list[dict[str, Any]]:
        """The run's events, each as ``{"position", "at", "type", "node"?, ...}``."""
        self.run(user_id, run_id)
        return [_history_entry(event) for event in self.events.get(run_id)]


_HIDDEN = {"originator_id", "originator_version", "timestamp", "graph", "quotes"}


def _history_entry(event: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "position": event.originator_version,
        "at": event.timestamp.isoformat().replace("+00:00", "Z"),
        "type": type(event).__name__,
    }
    for name, value in vars(event).items():
        if name in _HIDDEN or name.startswith("_"):
            continue
        entry[name] = str(value) if isinstance(value, (UUID, datetime)) else value
    return entry
