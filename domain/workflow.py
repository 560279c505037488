"""The workflow context's aggregates: versioned templates and their executions (runs).

A ``WorkflowTemplate`` holds a user's named workflow and its versions; a version is a graph
(see :mod:`application.workflow_graph` for its shape and its validation) that never changes once
added. A ``WorkflowExecution`` pins one version's graph and the run's inputs, and records every
transition of the run and of each node:

    node:  pending ─▶ queued ─▶ running ─▶ completed | failed | cancelled
              └──────────────────────────▶ skipped (an upstream node failed) | cancelled

    run:   queued ─▶ running ─▶ completed | failed
             │          └──▶ cancelling ─▶ cancelled
             └──▶ failed (not funded) | cancelled

A run is funded in *rounds*: the first when it starts, another each time a finished run has a
node retried. Each round holds credits for the nodes it will run; when the run ends, what its
completed nodes cost is charged from that round's hold and the rest released.

:meth:`WorkflowExecution.advance` is the one place that decides what happens next: every node
whose inputs are all complete is queued at once, the downstream of a failed node is skipped,
and the run ends when nothing is left that can move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any, ClassVar, Literal, get_args
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.credits import Cause
from domain.errors import Conflict, DomainError

NodeStatus = Literal["pending", "queued", "running", "completed", "failed", "skipped", "cancelled"]
RunStatus = Literal["queued", "running", "cancelling", "completed", "failed", "cancelled"]
NODE_STATUSES: tuple[NodeStatus, ...] = get_args(NodeStatus)
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
RUN_TERMINAL: frozenset[RunStatus] = frozenset({"completed", "failed", "cancelled"})
NODE_TERMINAL: frozenset[NodeStatus] = frozenset({"completed", "failed", "skipped", "cancelled"})
#: A node that has been handed to a worker: it ends on its own (it is waited for).
NODE_ACTIVE: frozenset[NodeStatus] = frozenset({"queued", "running"})

#: Operations run as an ordinary generation of a catalogue model of the same kind.
PROVIDER_OPS: Mapping[str, str] = {
    "generate": "image",
    "upscale": "upscale",
    "edit": "edit",
    "remove_background": "remove_background",
    "video": "video",
}
#: Operations run on our own workers with pyvips.
LOCAL_OPS = ("resize", "crop", "colour_correct", "composite", "grayscale")

_NODE_GENERATION = uuid5(NAMESPACE_URL, "pixevo:workflow-node-generation")

#: How long a run may wait for its funding round to be held: funding is a durable reaction,
#: and this bounds a run whose funding keeps failing all the same.
FUNDING_LIMIT = timedelta(minutes=10)

#: When a node queued now must have ended, by node id (the application knows each op's limit).
Deadline = Callable[[str], datetime]


class RunFinished(DomainError, Conflict):
    """A change asked of a run that has ended, or of a node in the wrong state (HTTP 409)."""


def binding_source(binding: str) -> tuple[str, str]:
    """``"$nodes.ID"`` -> ``("nodes", "ID")``; ``"$inputs.NAME"`` -> ``("inputs", "NAME")``."""
    kind, _, name = binding.removeprefix("$").partition(".")
    return kind, name


def dependencies(graph: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Each node's upstream nodes (those its ports are bound to), in graph order."""
    found: dict[str, tuple[str, ...]] = {}
    for node in graph["nodes"]:
        ups: list[str] = []
        for binding in (node.get("inputs") or {}).values():
            kind, name = binding_source(binding)
            if kind == "nodes" and name not in ups:
                ups.append(name)
        found[node["id"]] = tuple(ups)
    return found


def downstream(graph: Mapping[str, Any], roots: Iterable[str]) -> set[str]:
    """Every node that depends, directly or not, on one of ``roots`` (the roots excluded)."""
    dependants: dict[str, list[str]] = {}
    for node, ups in dependencies(graph).items():
        for up in ups:
            dependants.setdefault(up, []).append(node)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        for child in dependants.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen - set(roots)


def upstream(graph: Mapping[str, Any], node: str) -> set[str]:
    """Every node ``node`` depends on, directly or not."""
    deps = dependencies(graph)
    seen: set[str] = set()
    todo = list(deps[node])
    while todo:
        up = todo.pop()
        if up not in seen:
            seen.add(up)
            todo.extend(deps[up])
    return seen


def node_generation_id(run_id: UUID, node: str, attempt: int) -> UUID:
    """The generation a provider node's attempt makes: a redelivered start creates it once."""
    return uuid5(_NODE_GENERATION, f"{run_id}/{node}/{attempt}")


def run_cause(run_id: UUID, funding_round: int) -> Cause:
    """The cause of a funding round's hold (the first round's is the run itself)."""
    return Cause("workflow_run", str(run_id) if funding_round == 1 else f"{run_id}:{funding_round}")


def node_cause(run_id: UUID, node: str) -> Cause:
    """The cause a node's charge carries in the ledger."""
    return Cause("workflow_node", f"{run_id}/{node}")


class WorkflowTemplate(Aggregate):
    """A user's workflow: a name, a description and immutable numbered versions of its graph."""

    snapshot_every: ClassVar[int] = 50

    class Created(Aggregate.Created):
        owner_id: UUID
        name: str
        description: str
        #: Where an installed copy came from, ``{"listing_id", "version"}``; ``None``: made here.
        source: dict[str, Any] | None = None

    class VersionAdded(Aggregate.Event):
        version: int
        graph: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            template: WorkflowTemplate = aggregate
            template.versions[self.version] = {"graph": self.graph, "created_at": self.timestamp}

    class SourceMoved(Aggregate.Event):
        """An installed copy now follows a newer version of its listing (an upgrade)."""

        source: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            template: WorkflowTemplate = aggregate
            template.source = self.source

    def __init__(
        self, owner_id: UUID, name: str, description: str, source: dict[str, Any] | None = None
    ) -> None:
        self.owner_id, self.name, self.description = owner_id, name, description
        self.source = source
        self.versions: dict[int, dict[str, Any]] = {}

    @classmethod
    def create(
        cls,
        template_id: UUID,
        owner_id: UUID,
        name: str,
        description: str,
        source: dict[str, Any] | None = None,
    ) -> WorkflowTemplate:
        return cls._create(
            cls.Created,
            id=template_id,
            owner_id=owner_id,
            name=name,
            description=description,
            source=source,
        )

    @property
    def latest_version(self) -> int | None:
        return max(self.versions) if self.versions else None

    def add_version(self, graph: dict[str, Any]) -> int:
        """Adds a (validated) graph as the next version; returns its number."""
        version = (self.latest_version or 0) + 1
        self.trigger_event(self.VersionAdded, version=version, graph=graph)
        return version

    def follow_source(self, source: dict[str, Any], graph: dict[str, Any]) -> int:
        """An installed copy takes its listing's newer version as its own next version."""
        version = self.add_version(graph)
        self.trigger_event(self.SourceMoved, source=source)
        return version


def _node_state(node: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": node["id"],
        "op": node["op"],
        "status": "pending",
        "attempts": 0,
        "generation_id": None,
        "output": None,
        "cached": False,
        "reused_from": None,
        "fallback_from": None,
        "error": None,
        "charged": 0,
        "round": 0,
        "deadline": None,
        "started_at": None,
        "completed_at": None,
    }


class WorkflowExecution(Aggregate):
    """One run of a pinned workflow version over given inputs."""

    snapshot_every: ClassVar[int] = 200
    #: When a retry put the finished run back in ``queued`` (``None``: it never was).
    queued_since: datetime | None = None

    class Requested(Aggregate.Created):
        user_id: UUID
        workflow_id: UUID
        workflow_version: int
        graph: dict[str, Any]
        #: The run's inputs, defaults applied; an image input as its resolved record.
        inputs: dict[str, Any]
        #: Each node's quote in credit units (what it may cost at most).
        quotes: dict[str, int]
        allow_fallback: bool
        #: ``{"run_id", "node"}`` for a fork; ``None`` otherwise.
        forked_from: dict[str, Any] | None
        #: Nodes whose outputs a fork reuses as they are: ``{node: output record}``.
        reused: dict[str, dict[str, Any]]

    class Funded(Aggregate.Event):
        funding_round: int
        amount: int
        hold_id: UUID | None

        def apply(self, aggregate: Any) -> None:
            aggregate.status = "running"
            aggregate.funded_round = self.funding_round

    class FundingRefused(Aggregate.Event):
        code: str
        message: str

        def apply(self, aggregate: Any) -> None:
            run: WorkflowExecution = aggregate
            run.error = {"code": self.code, "message": self.message}

    class NodeQueued(Aggregate.Event):
        node: str
        attempt: int
        generation_id: UUID | None
        deadline: datetime

        def apply(self, aggregate: Any) -> None:
            state = aggregate.nodes[self.node]
            state.update(
                status="queued",
                attempts=self.attempt,
                generation_id=self.generation_id,
                deadline=self.deadline,
                error=None,
                output=None,
                cached=False,
                fallback_from=None,
                started_at=None,
                completed_at=None,
            )

    class LocalNodeQueued(NodeQueued):
        """A local op's node is queued: its own topic, so only the images queue's reaction
        is sent it (and the provider nodes' reaction is not)."""

    class NodeStarted(Aggregate.Event):
        node: str
        attempt: int

        def apply(self, aggregate: Any) -> None:
            state = aggregate.nodes[self.node]
            state.update(status="running", started_at=self.timestamp)

    class NodeCompleted(Aggregate.Event):
        node: str
        attempt: int
        #: ``{"storage_key", "width", "height", "media_type", "sha256", "bytes"}`` and, for a
        #: provider node, ``"generation_id"``.
        output: dict[str, Any]
        cached: bool
        charged: int
        fallback_from: str | None
        #: When the work began, where no ``NodeStarted`` said so (a local op).
        started_at: datetime | None = None

        def apply(self, aggregate: Any) -> None:
            state = aggregate.nodes[self.node]
            state.update(
                status="completed",
                output=self.output,
                cached=self.cached,
                charged=self.charged,
                fallback_from=self.fallback_from,
                round=aggregate.funded_round,
                deadline=None,
                completed_at=self.timestamp,
            )
            if state["started_at"] is None:
                state["started_at"] = self.started_at or self.timestamp

    class NodeFailed(Aggregate.Event):
        node: str
        attempt: int
        code: str
        message: str

        def apply(self, aggregate: Any) -> None:
            state = aggregate.nodes[self.node]
            state.update(
                status="failed",
                error={"code": self.code, "message": self.message},
                deadline=None,
                completed_at=self.timestamp,
            )

    class NodesSkipped(Aggregate.Event):
        nodes: list[str]
        because: str

        def apply(self, aggregate: Any) -> None:
            for node in self.nodes:
                aggregate.nodes[node].update(
                    status="skipped",
                    error={"code": "upstream_failed", "message": f"{self.because} failed"},
                    deadline=None,
                )

    class NodesCancelled(Aggregate.Event):
        nodes: list[str]

        def apply(self, aggregate: Any) -> None:
            for node in self.nodes:
                aggregate.nodes[node].update(status="cancelled", deadline=None)

    class CancelRequested(Aggregate.Event):
        def apply(self, aggregate: Any) -> None:
            aggregate.cancel_requested = True
            if aggregate.status == "running":
                aggregate.status = "cancelling"

    class Retried(Aggregate.Event):
        """``nodes`` go back to pending; a finished run starts ``funding_round`` for them."""

        node: str
        nodes: list[str]
        funding_round: int
        amount: int

        def apply(self, aggregate: Any) -> None:
            run: WorkflowExecution = aggregate
            for node in self.nodes:
                state = run.nodes[node]
                state.update(status="pending", error=None, deadline=None, output=None)
            if run.status in RUN_TERMINAL:
                run.status, run.round = "queued", self.funding_round
                run.queued_since = self.timestamp
                run.completed_at, run.outputs, run.error = None, None, None

    class Ended(Aggregate.Event):
        status: str
        outputs: dict[str, Any] | None
        #: The funding round that ends with it (what its settlement charges and releases).
        funding_round: int = 1

        def apply(self, aggregate: Any) -> None:
            aggregate.status = self.status
            aggregate.outputs = self.outputs
            aggregate.completed_at = self.timestamp

    def __init__(
        self,
        user_id: UUID,
        workflow_id: UUID,
        workflow_version: int,
        graph: dict[str, Any],
        inputs: dict[str, Any],
        quotes: dict[str, int],
        allow_fallback: bool,
        forked_from: dict[str, Any] | None,
        reused: dict[str, dict[str, Any]],
    ) -> None:
        self.user_id, self.workflow_id = user_id, workflow_id
        self.workflow_version = workflow_version
        self.graph, self.inputs, self.quotes = graph, inputs, quotes
        self.allow_fallback, self.forked_from = allow_fallback, forked_from
        self.status: RunStatus = "queued"
        self.round = 1
        self.funded_round = 0
        self.cancel_requested = False
        self.error: dict[str, str] | None = None
        self.outputs: dict[str, Any] | None = None
        self.completed_at: datetime | None = None
        self.nodes: dict[str, dict[str, Any]] = {n["id"]: _node_state(n) for n in graph["nodes"]}
        for node, output in reused.items():
            self.nodes[node].update(
                status="completed",
                output=output,
                reused_from=(forked_from or {}).get("run_id"),
            )

    @classmethod
    def request(
        cls,
        *,
        run_id: UUID,
        user_id: UUID,
        workflow_id: UUID,
        workflow_version: int,
        graph: dict[str, Any],
        inputs: dict[str, Any],
        quotes: dict[str, int],
        allow_fallback: bool,
        forked_from: dict[str, Any] | None = None,
        reused: dict[str, dict[str, Any]] | None = None,
    ) -> WorkflowExecution:
        return cls._create(
            cls.Requested,
            id=run_id,
            user_id=user_id,
            workflow_id=workflow_id,
            workflow_version=workflow_version,
            graph=graph,
            inputs=inputs,
            quotes=quotes,
            allow_fallback=allow_fallback,
            forked_from=forked_from,
            reused=reused or {},
        )

    # -- queries -------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.status in RUN_TERMINAL

    def node(self, node: str) -> dict[str, Any]:
        return self.nodes[node]

    def spec(self, node: str) -> dict[str, Any]:
        """The node as the pinned graph defines it."""
        return next(n for n in self.graph["nodes"] if n["id"] == node)

    def is_attempt(self, node: str, attempt: int, *statuses: NodeStatus) -> bool:
        """Whether ``node`` is on ``attempt`` and in one of ``statuses``: a stale message (an
        earlier attempt's, or one delivered again) changes nothing."""
        state = self.nodes.get(node)
        return state is not None and state["attempts"] == attempt and state["status"] in statuses

    def round_quote(self, nodes: Iterable[str]) -> int:
        return sum(self.quotes.get(node, 0) for node in nodes)

    def pending_quote(self) -> int:
        """What the nodes still to run may cost: the first round's hold."""
        return self.round_quote(n for n, s in self.nodes.items() if s["status"] == "pending")

    def charges(self, funding_round: int) -> dict[str, int]:
        """What each node completed in ``funding_round`` costs (reused nodes cost nothing)."""
        return {
            node: state["charged"]
            for node, state in self.nodes.items()
            if state["status"] == "completed"
            and state["round"] == funding_round
            and state["charged"] > 0
        }

    @property
    def charged(self) -> int:
        return sum(s["charged"] for s in self.nodes.values() if s["status"] == "completed")

    # -- commands ------------------------------------------------------------------------------

    def fund(self, hold_id: UUID | None, amount: int, deadline: Deadline) -> None:
        """The round's credits are held: the run starts."""
        if self.status != "queued":
            return
        self.trigger_event(self.Funded, funding_round=self.round, amount=amount, hold_id=hold_id)
        self.advance(deadline)

    def refuse_funding(self, code: str, message: str) -> None:
        if self.status != "queued":
            return
        self.trigger_event(self.FundingRefused, code=code, message=message)
        pending = [n for n, s in self.nodes.items() if s["status"] == "pending"]
        if pending:
            self.trigger_event(self.NodesCancelled, nodes=pending)
        self._end("failed")

    def start_node(self, node: str, attempt: int) -> bool:
        if not self.is_attempt(node, attempt, "queued"):
            return False
        self.trigger_event(self.NodeStarted, node=node, attempt=attempt)
        return True

    def complete_node(
        self,
        node: str,
        attempt: int,
        output: dict[str, Any],
        deadline: Deadline,
        *,
        cached: bool = False,
        charged: int = 0,
        fallback_from: str | None = None,
        started_at: datetime | None = None,
    ) -> bool:
        """Records the node's output; queues what it unblocks. ``charged`` is capped at the
        node's quote (a fallback never costs the run more than it was quoted)."""
        if not self.is_attempt(node, attempt, "queued", "running"):
            return False
        self.trigger_event(
            self.NodeCompleted,
            node=node,
            attempt=attempt,
            output=output,
            cached=cached,
            charged=min(charged, self.quotes.get(node, 0)),
            fallback_from=fallback_from,
            started_at=started_at,
        )
        self.advance(deadline)
        return True

    def fail_node(self, node: str, attempt: int, code: str, message: str) -> bool:
        if not self.is_attempt(node, attempt, "queued", "running"):
            return False
        self.trigger_event(self.NodeFailed, node=node, attempt=attempt, code=code, message=message)
        self.advance(None)
        return True

    def cancel_node(self, node: str, attempt: int) -> bool:
        """The node's generation was cancelled (the run's cancel, or an operator's)."""
        if not self.is_attempt(node, attempt, "queued", "running"):
            return False
        self.trigger_event(self.NodesCancelled, nodes=[node])
        self.advance(None)
        return True

    def request_cancel(self) -> list[str]:
        """Stops the run: nodes not started are cancelled at once, local ones waiting for a
        worker too; the provider nodes returned are running and must be cancelled at their
        provider (the run ends when they have)."""
        if self.finished:
            raise RunFinished(f"the run is already {self.status}")
        if self.cancel_requested:
            return self._running_provider_nodes()
        self.trigger_event(self.CancelRequested)
        idle = [
            n
            for n, s in self.nodes.items()
            if s["status"] == "pending" or (s["status"] == "queued" and s["op"] in LOCAL_OPS)
        ]
        if idle:
            self.trigger_event(self.NodesCancelled, nodes=idle)
        running = self._running_provider_nodes()
        if self.status == "queued":  # not funded yet: nothing runs
            self._end("cancelled")
        else:
            self.advance(None)
        return running

    def _running_provider_nodes(self) -> list[str]:
        return [
            n
            for n, s in self.nodes.items()
            if s["status"] in NODE_ACTIVE and s["op"] in PROVIDER_OPS
        ]

    def retry(self, node: str, deadline: Deadline) -> tuple[int, int]:
        """Re-runs ``node``, what it waits on that did not complete, and everything downstream;
        completed upstream outputs are reused. Returns ``(funding round, amount to hold)``:
        a running run's current round already holds for them; a finished run needs a new one."""
        state = self.nodes.get(node)
        if state is None:
            raise KeyError(node)
        if state["status"] not in ("failed", "skipped"):
            raise RunFinished(f"node {node} is {state['status']}: only a failed or skipped node")
        if self.cancel_requested and not self.finished:
            raise RunFinished("the run is being cancelled")
        roots = {node} | {
            up for up in upstream(self.graph, node) if self.nodes[up]["status"] != "completed"
        }
        reset = sorted(roots | downstream(self.graph, roots))
        if self.finished:
            funding_round, amount = self.round + 1, self.round_quote(reset)
        else:
            funding_round, amount = self.round, 0
        self.trigger_event(
            self.Retried, node=node, nodes=reset, funding_round=funding_round, amount=amount
        )
        if self.status != "queued":
            self.advance(deadline)
        return funding_round, amount

    def overdue(self, now: datetime) -> list[str]:
        return [
            n
            for n, s in self.nodes.items()
            if s["status"] in NODE_ACTIVE and s["deadline"] is not None and s["deadline"] <= now
        ]

    def expire(self, now: datetime) -> list[str]:
        """Ends what is past its deadline: a run never funded fails; each overdue node fails
        ``timeout``. Returns the provider nodes that failed (their generations to cancel)."""
        if self.status == "queued":
            due = next_deadline(self)
            if due is not None and due <= now:
                self.refuse_funding("funding_timeout", "its credits could not be held in time")
            return []
        abandoned = []
        for node in self.overdue(now):
            state = self.nodes[node]
            message = f"{state['op']} did not finish by {state['deadline']:%Y-%m-%dT%H:%M:%SZ}"
            if self.fail_node(node, state["attempts"], "timeout", message) and (
                state["op"] in PROVIDER_OPS
            ):
                abandoned.append(node)
        return abandoned

    # -- what happens next ---------------------------------------------------------------------

    def ready(self) -> list[str]:
        """Pending nodes whose upstream nodes have all completed, in graph order."""
        deps = dependencies(self.graph)
        return [
            n
            for n, s in self.nodes.items()
            if s["status"] == "pending"
            and all(self.nodes[up]["status"] == "completed" for up in deps[n])
        ]

    def advance(self, deadline: Deadline | None) -> list[str]:
        """Queues every ready node (each with its ``deadline``), skips what a failure blocks,
        and ends the run when nothing can move. Returns the nodes queued.

        ``None``: the change cannot have made a node ready (a failure, a cancel)."""
        if self.status not in ("running", "cancelling"):
            return []
        failed = [n for n, s in self.nodes.items() if s["status"] in ("failed", "skipped")]
        for node in failed:
            blocked = sorted(
                n for n in downstream(self.graph, [node]) if self.nodes[n]["status"] == "pending"
            )
            if blocked:
                self.trigger_event(self.NodesSkipped, nodes=blocked, because=node)
        queued: list[str] = []
        if not self.cancel_requested and deadline is not None:
            for node in self.ready():
                state = self.nodes[node]
                attempt = state["attempts"] + 1
                generation_id = (
                    node_generation_id(self.id, node, attempt)
                    if state["op"] in PROVIDER_OPS
                    else None
                )
                self.trigger_event(
                    self.NodeQueued if generation_id else self.LocalNodeQueued,
                    node=node,
                    attempt=attempt,
                    generation_id=generation_id,
                    deadline=deadline(node),
                )
                queued.append(node)
        statuses = {s["status"] for s in self.nodes.values()}
        if statuses & NODE_ACTIVE or (not self.cancel_requested and self.ready()):
            return queued
        if self.cancel_requested:
            self._end("cancelled")
        elif statuses == {"completed"}:
            self._end("completed")
        else:
            self._end("failed")
        return queued

    def _end(self, status: RunStatus) -> None:
        outputs = None
        if status == "completed":
            outputs = {
                name: self.nodes[binding_source(binding)[1]]["output"]
                for name, binding in self.graph.get("outputs", {}).items()
            }
        self.trigger_event(self.Ended, status=status, outputs=outputs, funding_round=self.round)


def next_deadline(run: Any) -> datetime | None:
    """When something of the run is next due (the aggregate, or the read side's folded state):
    the earliest deadline of its queued and running nodes, or its funding's while queued."""
    found = [
        s["deadline"]
        for s in run.nodes.values()
        if s["status"] in NODE_ACTIVE and s["deadline"] is not None
    ]
    if run.status == "queued":
        found.append((getattr(run, "queued_since", None) or run.created_on) + FUNDING_LIMIT)
    return min(found) if found else None


_REQUESTED_FIELDS = (
    "user_id",
    "workflow_id",
    "workflow_version",
    "graph",
    "inputs",
    "quotes",
    "allow_fallback",
    "forked_from",
    "reused",
)


def fold(state: Any, event: object) -> Any:
    """The run after ``event``, kept on a plain namespace: read models and a run's history
    use the aggregate's own ``__init__`` and ``apply`` methods, so they tell its story."""
    if isinstance(event, WorkflowExecution.Requested):
        state = SimpleNamespace(id=event.originator_id, created_on=event.timestamp)
        WorkflowExecution.__init__(state, **{f: getattr(event, f) for f in _REQUESTED_FIELDS})
    elif isinstance(event, WorkflowExecution.Event):
        event.apply(state)
    return state
