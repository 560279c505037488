"""The reactions that move a workflow run: fund it, start its nodes, follow their generations,
cancel them, settle the run.

    Requested/Retried ─▶ FundRun ─▶ hold on the user (cause: the run's round) ─▶ Funded
    NodeQueued ─▶ StartProviderNode ─▶ Generation (cause: the run, its node; id from run, node,
                                         attempt) ─ ─ ─▶ FollowNodeGeneration ─▶ NodeCompleted…
    LocalNodeQueued ─▶ RunLocalNode (images queue) ─▶ pyvips, content-addressed ─▶ NodeCompleted…
    CancelRequested ─▶ CancelRunNodes ─▶ each running node's generation asked to cancel
    Ended ─▶ SettleRun ─▶ each completed node's charge drawn from the round's hold, rest released

Each records its effect with a tracking record of the event it handled (in the application it
writes to), so a message delivered twice, or a worker killed half-way, records nothing twice;
a node message for an attempt that is no longer current changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Tracking

from application.billing import AccountNotFound, BillingApplication
from application.errors import Invalid
from application.generations import GenerationNotFound, GenerationsApplication
from application.inputs import ImageInput, result_image
from application.logs import topic_of
from application.ports import BlobStore
from application.reactions import IMAGES_QUEUE, Reaction
from application.retry import retry_on_conflict
from application.workflow_graph import plan_node
from application.workflows import WorkflowsApplication
from domain.credits import Cause, hold_id_for
from domain.errors import InsufficientCredits
from domain.generation import ENDINGS, Generation, GenerationFinished
from domain.workflow import (
    LOCAL_OPS,
    PROVIDER_OPS,
    WorkflowExecution,
    binding_source,
    node_cause,
    run_cause,
)

log = logging.getLogger(__name__)

#: Local operations' outputs, by the hash of what made them (op, params, input bytes).
CACHE_PREFIX = "workflow-cache/"


class LocalResult(Protocol):
    @property
    def data(self) -> bytes: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def media_type(self) -> str: ...


class LocalOps(Protocol):
    """Runs a local operation on encoded images (pyvips, in infrastructure)."""

    def __call__(
        self, op: str, params: Mapping[str, Any], images: Mapping[str, bytes]
    ) -> LocalResult: ...


def _node_inputs(run: WorkflowExecution, node: str) -> dict[str, ImageInput]:
    """The node's image ports: the run's image inputs and its upstream nodes' outputs."""
    found: dict[str, ImageInput] = {}
    for port, binding in (run.spec(node).get("inputs") or {}).items():
        kind, name = binding_source(binding)
        if kind == "nodes":
            output = run.nodes[name]["output"]
            found[port] = ImageInput(
                f"node:{name}",
                str(output["storage_key"]),
                int(output["width"]),
                int(output["height"]),
                str(output["media_type"]),
                str(output["sha256"]),
            )
        elif isinstance(run.inputs.get(name), dict):
            found[port] = ImageInput.of_record(run.inputs[name])
    return found


def _values(run: WorkflowExecution) -> dict[str, Any]:
    return {name: v for name, v in run.inputs.items() if not isinstance(v, dict)}


class FundRun(Reaction):
    """A run's round is held before any of its nodes starts (402-like refusal: the run fails
    ``insufficient_credits`` with nothing charged)."""

    name = "fund_workflow_run"
    upstream = "workflows"
    topics = (topic_of(WorkflowExecution.Requested), topic_of(WorkflowExecution.Retried))

    def __init__(self, workflows: WorkflowsApplication, billing: BillingApplication) -> None:
        self.workflows, self.billing = workflows, billing

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if self.workflows.already_processed(tracking):
            return False
        run = self.workflows.run(None, event.originator_id)
        if isinstance(event, WorkflowExecution.Retried):
            funding_round, amount = event.funding_round, event.amount
        else:
            funding_round, amount = 1, run.pending_quote()
        cause = run_cause(run.id, funding_round)
        hold_id: UUID | None = None
        refused: Exception | None = None
        if run.status == "queued" and run.round == funding_round and amount > 0:
            try:
                hold_id = self.billing.place_hold(run.user_id, amount, cause)
            except (InsufficientCredits, AccountNotFound) as error:
                refused = error
        stale: list[bool] = []

        def fund(run: WorkflowExecution) -> None:
            if run.status != "queued" or run.round != funding_round:
                # funded already, or a retry within the running round: nothing to hold; ended
                # (cancelled) meanwhile: a hold placed for this round goes back
                if run.finished:
                    stale.append(True)
            elif refused is not None:
                run.refuse_funding("insufficient_credits", str(refused))
            else:
                run.fund(hold_id, amount, self.workflows.deadline_for(run))

        recorded = self.workflows.change(run.id, fund, tracking)
        if stale:  # a no-op when no hold of this round is open
            self.billing.release_cause(run.user_id, cause)
        return recorded


class StartProviderNode(Reaction):
    """A provider node's attempt becomes an ordinary generation: billing, retries, breakers,
    fallback, caching, moderation and live progress are the generation path's."""

    name = "start_workflow_node"
    upstream = "workflows"
    topics = (topic_of(WorkflowExecution.NodeQueued),)

    def __init__(
        self, workflows: WorkflowsApplication, generations: GenerationsApplication
    ) -> None:
        self.workflows, self.generations = workflows, generations

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if not isinstance(event, WorkflowExecution.NodeQueued):
            return False
        run = self.workflows.run(None, event.originator_id)
        if run.spec(event.node)["op"] not in PROVIDER_OPS:
            return False
        if not run.is_attempt(event.node, event.attempt, "queued"):
            return False
        if run.cancel_requested:  # cancelled before its generation was made: it never is
            return self.workflows.change(
                run.id, lambda run: run.cancel_node(event.node, event.attempt), tracking
            )
        if event.generation_id is None:  # pragma: no cover - provider nodes always have one
            raise ValueError(f"node {event.node} queued without a generation id")
        try:
            plan = plan_node(
                run.spec(event.node),
                _values(run),
                _node_inputs(run, event.node),
                self.workflows.catalogue,
                lambda request, inputs: self.generations.quote(request, inputs=inputs),
            )
        except Invalid as refused:
            return self._fail(tracking, run.id, event, "invalid_request", str(refused))
        if plan.request is None or plan.normalised is None:  # pragma: no cover - provider op
            raise ValueError(f"node {event.node} has no request")
        hold = hold_id_for(run_cause(run.id, run.round))
        made = self.generations.request_part(
            tracking,
            event.generation_id,
            run.user_id,
            replace(plan.request, allow_fallback=run.allow_fallback),
            plan.normalised,
            Cause("workflow_run", str(run.id)),
            {"node": event.node, "attempt": str(event.attempt), "hold": str(hold)},
        )
        self._started(run.id, event.node, event.attempt)
        return made

    def _started(self, run_id: UUID, node: str, attempt: int) -> None:
        self.workflows.change(run_id, lambda run: run.start_node(node, attempt))

    def _fail(
        self,
        tracking: Tracking,
        run_id: UUID,
        event: WorkflowExecution.NodeQueued,
        code: str,
        message: str,
    ) -> bool:
        return self.workflows.change(
            run_id, lambda run: run.fail_node(event.node, event.attempt, code, message), tracking
        )


class RunLocalNode(Reaction):
    """A local node's op, on the images queue: the same op, params and input bytes reuse the
    stored output (``cached``) instead of doing the work again."""

    name = "run_workflow_local_node"
    upstream = "workflows"
    topics = (topic_of(WorkflowExecution.LocalNodeQueued),)
    queue = IMAGES_QUEUE

    def __init__(
        self, workflows: WorkflowsApplication, blobs: BlobStore, local_ops: LocalOps
    ) -> None:
        self.workflows, self.blobs, self.local_ops = workflows, blobs, local_ops

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if not isinstance(event, WorkflowExecution.NodeQueued):
            return False
        run = self.workflows.run(None, event.originator_id)
        node = event.node
        if run.spec(node)["op"] not in LOCAL_OPS or not run.is_attempt(
            node, event.attempt, "queued"
        ):
            return False
        started = datetime.now(UTC)
        try:
            output, cached = self._output(run, node)
        except Invalid as refused:
            return self._record(tracking, run.id, event, error=("invalid_input", str(refused)))
        return self._record(tracking, run.id, event, output=output, cached=cached, started=started)

    def _output(self, run: WorkflowExecution, node: str) -> tuple[dict[str, Any], bool]:
        spec = run.spec(node)
        inputs = _node_inputs(run, node)
        params = plan_node(spec, _values(run), inputs, self.workflows.catalogue, _no_quote).params
        key = hashlib.sha256(
            json.dumps(
                [spec["op"], params, {p: i.sha256 for p, i in sorted(inputs.items())}],
                sort_keys=True,
            ).encode()
        ).hexdigest()
        meta_key = f"{CACHE_PREFIX}{key}.json"
        try:
            return json.loads(self.blobs.get(meta_key)), True
        except (FileNotFoundError, KeyError):
            pass
        begun = time.perf_counter()
        made = self.local_ops(
            spec["op"], params, {port: self.blobs.get(i.storage_key) for port, i in inputs.items()}
        )
        storage_key = f"{CACHE_PREFIX}{key}.png"
        self.blobs.put(storage_key, made.data, made.media_type)
        output = {
            "storage_key": storage_key,
            "width": made.width,
            "height": made.height,
            "media_type": made.media_type,
            "sha256": hashlib.sha256(made.data).hexdigest(),
            "bytes": len(made.data),
        }
        # the description last: a cache entry is only found once its bytes are there
        self.blobs.put(meta_key, json.dumps(output).encode(), "application/json")
        log.debug("local op %s took %.1f ms", spec["op"], (time.perf_counter() - begun) * 1000)
        return output, False

    def _record(
        self,
        tracking: Tracking,
        run_id: UUID,
        event: WorkflowExecution.NodeQueued,
        *,
        output: dict[str, Any] | None = None,
        cached: bool = False,
        started: datetime | None = None,
        error: tuple[str, str] | None = None,
    ) -> bool:
        def record(run: WorkflowExecution) -> None:
            if error is not None:
                run.fail_node(event.node, event.attempt, *error)
            elif output is not None:
                run.complete_node(
                    event.node,
                    event.attempt,
                    output,
                    self.workflows.deadline_for(run),
                    cached=cached,
                    started_at=started,
                )

        return self.workflows.change(run_id, record, tracking)


def _no_quote(*_: Any) -> Any:  # pragma: no cover - local ops are never quoted
    raise TypeError("a local node has no generation request")


class FollowNodeGeneration(Reaction):
    """A node's generation ended: the node completes with its result (charged what the
    generation cost, never above the node's quote), or fails, or is cancelled."""

    name = "follow_workflow_node"
    upstream = "generations"
    topics = tuple(topic_of(c) for c in ENDINGS)

    def __init__(
        self,
        workflows: WorkflowsApplication,
        generations: GenerationsApplication,
        blobs: BlobStore,
    ) -> None:
        self.workflows, self.generations, self.blobs = workflows, generations, blobs

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        generation = self.generations.generation(None, event.originator_id)
        if generation.cause.type != "workflow_run":
            return False
        run_id = UUID(generation.cause.id)
        part = generation.cause_part
        node, attempt = part["node"], int(part.get("attempt", "1"))
        outcome = self._outcome(generation)

        def record(run: WorkflowExecution) -> None:
            if outcome[0] == "completed":
                _, output, charged = outcome
                run.complete_node(
                    node,
                    attempt,
                    output,
                    self.workflows.deadline_for(run),
                    cached=generation.from_cache is not None,
                    charged=charged,
                    fallback_from=generation.fallback_from,
                )
            elif outcome[0] == "cancelled":
                run.cancel_node(node, attempt)
            else:
                run.fail_node(node, attempt, outcome[1], outcome[2])

        return self.workflows.change(run_id, record, tracking)

    def _outcome(self, generation: Generation) -> tuple[Any, Any, Any]:
        if generation.status == "completed" and generation.result is not None:
            found = result_image(generation.result, generation.processed)
            if found is None:  # a video: its stored file is the output
                key = str(generation.result["storage_key"])
                width = int(generation.result.get("width") or 0)
                height = int(generation.result.get("height") or 0)
                media_type = str(generation.result.get("content_type", "video/mp4"))
            else:
                key, width, height, media_type = found
            data = self.blobs.get(key)
            output = {
                "storage_key": key,
                "width": width,
                "height": height,
                "media_type": media_type,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "generation_id": str(generation.id),
            }
            return "completed", output, generation.charged or 0
        if generation.status == "cancelled":
            return "cancelled", None, None
        error = generation.error or {}
        if generation.status == "blocked":
            return "failed", "blocked", "the result was blocked by moderation"
        return (
            "failed",
            error.get("code", "generation_failed"),
            error.get("message", f"generation {generation.id} {generation.status}"),
        )


class CancelRunNodes(Reaction):
    """A cancelled run's running provider nodes: their generations are asked to cancel."""

    name = "cancel_workflow_nodes"
    upstream = "workflows"
    topics = (topic_of(WorkflowExecution.CancelRequested),)

    def __init__(
        self, workflows: WorkflowsApplication, generations: GenerationsApplication
    ) -> None:
        self.workflows, self.generations = workflows, generations

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:  # noqa: ARG002
        # asking twice is harmless: a generation already cancelling or ended stays as it is
        run = self.workflows.run(None, event.originator_id)
        for node, state in run.nodes.items():
            if state["op"] in PROVIDER_OPS and state["status"] in ("queued", "running"):
                generation_id = state["generation_id"]
                # not made yet (its start sees the cancel), or already ended: nothing to do
                with contextlib.suppress(GenerationNotFound, GenerationFinished):
                    self.generations.cancel(run.user_id, generation_id)
                log.info("cancel asked of node %s of run %s", node, run.id)
        return True


class SettleRun(Reaction):
    """An ended run's round: each completed node's charge drawn from the round's hold (a
    ledger entry each, the node as cause), the rest released."""

    name = "settle_workflow_run"
    upstream = "workflows"
    topics = (topic_of(WorkflowExecution.Ended),)

    def __init__(self, workflows: WorkflowsApplication, billing: BillingApplication) -> None:
        self.workflows, self.billing = workflows, billing

    def handle(self, event: DomainEventProtocol[UUID], tracking: Tracking) -> bool:
        if not isinstance(event, WorkflowExecution.Ended):
            return False
        # the run as it ended (a retry may since have started another round)
        run = self.workflows.run_version(event.originator_id, event.originator_version)
        funding_round = event.funding_round
        parts = {
            node_cause(run.id, node): amount for node, amount in run.charges(funding_round).items()
        }
        hold = hold_id_for(run_cause(run.id, funding_round))
        return bool(
            retry_on_conflict(self.billing.settle_parts)(tracking, run.user_id, hold, parts)
        )
