"""The composition root: reads settings once and builds everything else from them.

Nothing connects at import time; each part is built on first use, so a process builds only
what it runs (the API never builds a broker's workers, a worker never opens the async pool).

A bounded context is one :class:`BoundedContext` record in :data:`CONTEXTS`: its application,
the reactions it contributes, its projections and the extra arguments its application takes.
Adding a context is adding one record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, cast

import dramatiq
import psycopg
import psycopg_pool
import redis.asyncio as aioredis
import structlog
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from psycopg import sql

from application.base import DDL_LOCK, PixevoApplication
from application.billing import BillingApplication
from application.catalogue import Catalogue, UnknownModel, default_catalogue
from application.generations import GenerationNotFound, GenerationsApplication
from application.marketplace import MarketplaceApplication
from application.marketplace_reactions import (
    CopyInstalledWorkflow,
    PayOutInstall,
    RecordInstall,
    RefundInstall,
)
from application.moderation import RULES_FILE, BlockedBilling, ModerationPolicy, PromptRules
from application.ports import Deferral
from application.post_processing import DeriveResult, ProcessResult
from application.reactions import REACTIONS_QUEUE, Reaction, Reactor
from application.saga import CancelAtProvider, FundGeneration, Generate, SettleGeneration
from application.saga.deadlines import Deadlines, Patience
from application.uploads import Uploads
from application.users import Users
from application.webhooks import WebhooksApplication
from application.workflow_reactions import (
    CancelRunNodes,
    FollowNodeGeneration,
    FundRun,
    RunLocalNode,
    SettleRun,
    StartProviderNode,
)
from application.workflows import WorkflowsApplication
from domain.generation import GenerationFinished
from infrastructure import embedded
from infrastructure.actors import declare_react_actor
from infrastructure.breakers import RedisCircuitBreakers, breaker_namespace
from infrastructure.broker import make_broker
from infrastructure.dispatcher import Dispatcher
from infrastructure.identity import PostgresUserStore
from infrastructure.imaging.classifier import HttpClassifier
from infrastructure.imaging.ingest import PyvipsIngest
from infrastructure.imaging.local_ops import run_local_op
from infrastructure.imaging.pipeline import PyvipsPipeline
from infrastructure.live import RedisLivePublisher
from infrastructure.logging import configure_logging
from infrastructure.migrations import migrate
from infrastructure.parking import Parking, ProviderSlots
from infrastructure.postgres import datastore, eventstore_env
from infrastructure.providers import Providers
from infrastructure.providers.inputs import ProviderInputs
from infrastructure.scheduler import Scheduler
from infrastructure.settings import Settings
from infrastructure.signing import AssetSigner
from infrastructure.storage import LocalBlobStore
from infrastructure.tokens import StreamTokens, stream_secret
from infrastructure.tracing import configure_tracing
from infrastructure.webhooks import WebhookSender, resolve_host
from interfaces.http.auth import KeyCache
from interfaces.http.streams import Fanout, LiveFeeds
from projections import generation_queries, webhook_queries, workflow_queries
from projections.base import ProjectionView
from projections.earnings import EarningsView
from projections.generations import GenerationsView
from projections.ledger import LedgerView
from projections.marketplace import MarketplaceView
from projections.model_timings import ModelTimingsView, Timings
from projections.provider_health import ProviderHealthView
from projections.result_cache import ProjectedResultCache
from projections.runner import ProjectionRunner
from projections.webhooks import CHANNEL as WEBHOOK_CHANNEL
from projections.webhooks import VIEWS as WEBHOOK_VIEWS
from projections.workflows import WorkflowsView

#: Connections of an API process's async pool (the API only reads, one statement at a time).
API_POOL_SIZE = 16
#: Connections of a worker's or a command's pool.
POOL_SIZE = 8

ReactionFactory = Callable[["Container"], Reaction]


def _no_extras(_: Container, __: Mapping[str, PixevoApplication]) -> Mapping[str, Any]:
    return {}


def _no_view_extras(_: Container, __: bool) -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class Projection:
    """A projection of a context's log, and the extra arguments its view takes (``live``: it
    writes the live tables, not a rebuild's scratch copy)."""

    view: type[ProjectionView]
    extras: Callable[[Container, bool], Mapping[str, Any]] = _no_view_extras


@dataclass(frozen=True, slots=True)
class BoundedContext:
    """Everything the platform runs for one bounded context.

    ``name`` is its schema and table prefix; ``extras`` the application's constructor
    arguments beyond its environment (given the applications of the contexts before it).
    """

    name: str
    application: type[PixevoApplication]
    reactions: tuple[ReactionFactory, ...] = ()
    projections: tuple[Projection, ...] = ()
    extras: Callable[[Container, Mapping[str, PixevoApplication]], Mapping[str, Any]] = _no_extras
    #: The name its aggregates' ids are bound under in the logs of the reactions to its events.
    log_key: str | None = None


CONTEXTS: tuple[BoundedContext, ...] = (
    BoundedContext(
        "billing",
        BillingApplication,
        projections=(Projection(LedgerView), Projection(EarningsView)),
    ),
    BoundedContext(
        "generations",
        GenerationsApplication,
        reactions=(
            lambda c: Generate(
                c.generations,
                FundGeneration(c.generations, c.billing, ProjectedResultCache(c.pool)),
                c.providers,
                c.breakers,
                c.blobs,
                live=c.live,
                slots=c.slots,
                patience=c.patience,
            ),
            lambda c: CancelAtProvider(c.generations, c.providers),
            lambda c: SettleGeneration(c.generations, c.billing),
            lambda c: ProcessResult(c.generations, c.blobs, PyvipsPipeline(), c.classifier),
            lambda c: DeriveResult(c.generations, c.blobs, PyvipsPipeline()),
        ),
        projections=(
            # it publishes the live feed (not while rebuilding)
            Projection(
                GenerationsView,
                lambda c, live: {
                    "publisher": c.live if live else None,
                    "allowance": c.patience.allowance_of(c.catalogue),
                },
            ),
            Projection(ModelTimingsView),
            Projection(ProviderHealthView),
        ),
        extras=lambda c, _: {"moderation": c.moderation, "blobs": c.blobs},
        log_key="generation_id",
    ),
    BoundedContext(
        "workflows",
        WorkflowsApplication,
        reactions=(
            lambda c: FundRun(c.workflows, c.billing),
            lambda c: StartProviderNode(c.workflows, c.generations),
            lambda c: RunLocalNode(c.workflows, c.blobs, run_local_op),
            lambda c: FollowNodeGeneration(c.workflows, c.generations, c.blobs),
            lambda c: CancelRunNodes(c.workflows, c.generations),
            lambda c: SettleRun(c.workflows, c.billing),
        ),
        extras=lambda c, built: {
            "generations": built["generations"],
            "provider_allowance": c.patience.defer_limit + 2 * c.patience.margin,
        },
        # the runs' live feed is published by the live tables' runner only
        projections=(
            Projection(WorkflowsView, lambda c, live: {"publisher": c.live if live else None}),
        ),
        log_key="workflow_run_id",
    ),
    BoundedContext(
        "marketplace",
        MarketplaceApplication,
        reactions=(
            lambda c: RecordInstall(c.marketplace),
            lambda c: CopyInstalledWorkflow(c.marketplace, c.workflows),
            lambda c: PayOutInstall(c.billing),
            lambda c: RefundInstall(c.marketplace, c.billing),
        ),
        projections=(Projection(MarketplaceView),),
        extras=lambda c, built: {
            "billing": built["billing"],
            "workflows": built["workflows"],
            "fee_rate": c.settings.marketplace_fee,
        },
        log_key="install_id",
    ),
    BoundedContext(
        "webhooks",
        WebhooksApplication,
        # the outbox: one view per log whose events become messages, all in proj_webhooks
        projections=tuple(Projection(view) for view in WEBHOOK_VIEWS),
        extras=lambda c, _: {
            "resolve": resolve_host,
            "allow_private": c.settings.webhooks_allow_private,
        },
        log_key="webhook_id",
    ),
)

#: Derived from :data:`CONTEXTS`: every application, projection and reaction, by name.
APPLICATIONS: Mapping[str, type[PixevoApplication]] = {c.name: c.application for c in CONTEXTS}
PROJECTIONS: Mapping[str, type[ProjectionView]] = {
    p.view.projection_name: p.view for c in CONTEXTS for p in c.projections
}
REACTIONS: tuple[ReactionFactory, ...] = tuple(r for c in CONTEXTS for r in c.reactions)


def _contexts(
    applications: Mapping[str, type[PixevoApplication]] | None,
) -> dict[str, BoundedContext]:
    """:data:`CONTEXTS`, with ``applications`` replacing or adding contexts' applications."""
    contexts = {c.name: c for c in CONTEXTS}
    for name, cls in (applications or {}).items():
        known = contexts.get(name)
        contexts[name] = replace(known, application=cls) if known else BoundedContext(name, cls)
    return contexts


@dataclass
class Api:
    """What one API app holds: its async pool, Redis clients and live feeds. Built with the
    app, opened and closed by its lifespan (bound to the app's event loop)."""

    pool: psycopg_pool.AsyncConnectionPool
    redis: aioredis.Redis
    channels: ChannelsPlugin
    timings: Timings
    feeds: LiveFeeds
    stream_tokens: StreamTokens
    key_cache: KeyCache

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.pool.close()


class Container:
    def __init__(
        self,
        settings: Settings,
        *,
        reactions: Iterable[ReactionFactory] = (),
        applications: Mapping[str, type[PixevoApplication]] | None = None,
    ) -> None:
        self.settings: Settings = settings
        self.database_url, self.redis_url = settings.urls()
        self._reaction_factories = list(reactions)
        self.contexts = _contexts(applications)
        self._projections = {
            p.view.projection_name: p for c in self.contexts.values() for p in c.projections
        }

    # -- write side ------------------------------------------------------------------------

    @cached_property
    def applications(self) -> dict[str, PixevoApplication]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", [DDL_LOCK])  # one process at a time
            try:
                for name in self.contexts:  # each context in its own schema
                    conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name))
                    )
                built: dict[str, PixevoApplication] = {}
                for name, context in self.contexts.items():  # in order: later ones use earlier
                    built[name] = context.application(
                        env=eventstore_env(self.database_url, schema=name),
                        **context.extras(self, built),
                    )
                return built
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", [DDL_LOCK])

    @cached_property
    def moderation(self) -> ModerationPolicy:
        settings = self.settings
        rules = PromptRules.load(settings.moderation_rules or RULES_FILE)
        billing: BlockedBilling = "charge" if settings.blocked_billing == "charge" else "waive"
        return ModerationPolicy(settings.nsfw_threshold, billing, rules)

    @property
    def billing(self) -> BillingApplication:
        return cast("BillingApplication", self.applications["billing"])

    @property
    def generations(self) -> GenerationsApplication:
        return cast("GenerationsApplication", self.applications["generations"])

    @property
    def workflows(self) -> WorkflowsApplication:
        return cast("WorkflowsApplication", self.applications["workflows"])

    @property
    def marketplace(self) -> MarketplaceApplication:
        return cast("MarketplaceApplication", self.applications["marketplace"])

    @property
    def webhooks(self) -> WebhooksApplication:
        return cast("WebhooksApplication", self.applications["webhooks"])

    @cached_property
    def catalogue(self) -> Catalogue:
        return default_catalogue()

    def seed_timing(self, model: str) -> tuple[float, float]:
        """A model's (P50, P95) in seconds from the catalogue (a generous guess if unknown)."""
        try:
            timing = self.catalogue.get(model).timing
        except UnknownModel:
            return 10.0, 30.0
        return timing.p50_ms / 1000, timing.p95_ms / 1000

    @cached_property
    def providers(self) -> Providers:
        inputs = ProviderInputs(self.blobs, self.asset_signer, self.settings.api_url())
        return Providers(self.catalogue, self.settings.provider, inputs=inputs)

    @cached_property
    def asset_signer(self) -> AssetSigner:
        """Signs the links providers fetch image inputs from (the API verifies them)."""
        return AssetSigner(stream_secret(self.settings.stream_secret, self.settings.data_dir))

    @cached_property
    def uploads(self) -> Uploads:
        return Uploads(self.generations, self.blobs, PyvipsIngest())

    @cached_property
    def breakers(self) -> RedisCircuitBreakers:
        return RedisCircuitBreakers(
            self.redis_url, breaker_namespace(self.settings.redis_namespace)
        )

    @cached_property
    def blobs(self) -> LocalBlobStore:
        return LocalBlobStore(self.settings.data_dir / "blobs")

    @cached_property
    def pool(self) -> psycopg_pool.ConnectionPool:
        return psycopg_pool.ConnectionPool(
            self.database_url, min_size=1, max_size=POOL_SIZE, open=True
        )

    @cached_property
    def patience(self) -> Patience:
        settings = self.settings
        return Patience(
            defer_limit=timedelta(seconds=settings.defer_limit_s),
            margin=timedelta(seconds=settings.deadline_margin_s),
        )

    @cached_property
    def slots(self) -> ProviderSlots:
        return ProviderSlots(self.pool, self.settings.user_concurrency)

    @cached_property
    def parking(self) -> Parking:
        return Parking(self.pool)

    @cached_property
    def classifier(self) -> HttpClassifier:
        return HttpClassifier(self.settings.classifier())

    @cached_property
    def live(self) -> RedisLivePublisher:
        return RedisLivePublisher(self.redis_url, self.settings.redis_namespace)

    @cached_property
    def users(self) -> Users:
        return Users(PostgresUserStore(self.pool), self.billing)

    # -- the API -----------------------------------------------------------------------------

    def api(self) -> Api:
        """A new set of the API's resources, for one app (see :class:`Api`)."""
        # autocommit: the API only reads, one statement at a time; no BEGIN/COMMIT round trips
        pool = psycopg_pool.AsyncConnectionPool(
            self.database_url,
            min_size=2,
            max_size=API_POOL_SIZE,
            open=False,
            timeout=5,
            kwargs={"autocommit": True},
        )
        # the live feeds: one pub/sub connection per process, one subscriber per channel,
        # which hands each message to the streams on it (no queue or task per stream)
        channels = ChannelsPlugin(
            backend=RedisChannelsPubSubBackend(
                redis=aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
            ),
            arbitrary_channels_allowed=True,
            subscriber_class=Fanout,
        )
        timings = Timings(pool, self.seed_timing)
        settings = self.settings
        feeds = LiveFeeds(
            pool,
            channels,
            timings,
            namespace=settings.redis_namespace,
            heartbeat_s=settings.sse_heartbeat_s,
            streaming_models=frozenset(
                spec.key for spec in self.catalogue if spec.capabilities.streaming
            ),
            # stored-feed reads at once: the rest wait their turn, not the pool's
            concurrent_reads=API_POOL_SIZE // 2,
        )
        return Api(
            pool=pool,
            redis=aioredis.Redis.from_url(self.redis_url, socket_timeout=2),
            channels=channels,
            timings=timings,
            feeds=feeds,
            stream_tokens=StreamTokens(stream_secret(settings.stream_secret, settings.data_dir)),
            key_cache=KeyCache(),
        )

    # -- reactions -------------------------------------------------------------------------

    @cached_property
    def reactor(self) -> Reactor:
        return Reactor(self.applications, [make(self) for make in self._reaction_factories])

    @cached_property
    def broker(self) -> dramatiq.Broker:
        timeout_ms = round(self.settings.worker_heartbeat_timeout_s * 1000)
        broker = make_broker(self.redis_url, self.settings.redis_namespace, timeout_ms)
        dramatiq.set_broker(broker)
        return broker

    @cached_property
    def react_actors(self) -> dict[str, dramatiq.Actor[..., None]]:
        """One actor per queue the reactions use (``reactions`` always)."""
        queues = sorted({REACTIONS_QUEUE, *self.reactor.queues()})
        return {
            q: declare_react_actor(self.broker, lambda: self.reactor, self.park, q) for q in queues
        }

    def park(self, reaction: str, upstream: str, notification_id: int, why: Deferral) -> None:
        self.parking.park(reaction, upstream, notification_id, why)

    @property
    def react_actor(self) -> dramatiq.Actor[..., None]:
        return self.react_actors[REACTIONS_QUEUE]

    def enqueue_reaction(self, reaction: str, upstream: str, notification_id: int) -> None:
        self.react_actors[self.reactor.queue_of(reaction)].send_with_options(
            kwargs={"reaction": reaction, "upstream": upstream, "notification_id": notification_id}
        )

    def dispatchers(self) -> list[Dispatcher]:
        return [
            Dispatcher(
                self.database_url,
                name,
                app.recorder,
                self.reactor.subscriptions(name),
                self.enqueue_reaction,
                log_key=self.contexts[name].log_key,
            )
            for name, app in self.applications.items()
        ]

    def scheduler(self) -> Scheduler:
        """Parked messages sent again, capped generations admitted, deadlines swept."""
        return Scheduler(
            self.database_url, self.parking, self.slots, self.enqueue_reaction, self.sweep
        )

    def webhook_sender(self) -> WebhookSender:
        """Sends the webhooks outbox (in the dispatcher's process)."""
        settings = self.settings
        return WebhookSender(
            self.database_url,
            webhook_queries,
            WEBHOOK_CHANNEL,
            self.webhooks.disable,
            schedule=settings.webhook_retry_schedule,
            disable_after_s=settings.webhook_disable_after_s,
            allow_private=settings.webhooks_allow_private,
            # due retries are found by polling: no later than the shortest retry delay
            poll_s=max(0.05, min([1.0, *(d for d in settings.webhook_retry_schedule if d > 0)])),
        )

    def sweep(self) -> int:
        """Ends generations past their deadline; frees the slots of finished generations."""
        deadlines = Deadlines(self.generations, self.providers, self.patience)
        ended = 0
        for generation_id in generation_queries.overdue(self.pool, datetime.now(UTC)):
            with structlog.contextvars.bound_contextvars(generation_id=str(generation_id)):
                ended += deadlines.expire(generation_id)
        for generation_id in generation_queries.finished_among(self.pool, self.slots.held()):
            self.slots.release(generation_id)
        return ended + self._expire_workflow_nodes()

    def _expire_workflow_nodes(self) -> int:
        """Workflow nodes past their deadline fail (their run moves on); a provider node's
        generation is asked to cancel."""
        ended = 0
        now = datetime.now(UTC)
        for run_id in workflow_queries.overdue_runs(self.pool, now):
            with structlog.contextvars.bound_contextvars(workflow_run_id=str(run_id)):
                user_id, abandoned = self.workflows.expire(run_id, now)
                for generation_id in abandoned:
                    with contextlib.suppress(GenerationNotFound, GenerationFinished):
                        self.generations.cancel(user_id, generation_id)
                ended += 1
        return ended

    # -- read side -------------------------------------------------------------------------

    def projection(self, name: str, schema: str | None = None) -> ProjectionRunner:
        projection = self._projections[name]
        view_class = projection.view
        live = schema is None or schema == view_class.live_schema()
        # one connection: the runner holds its DDL lock on a session of its own
        store = datastore(self.database_url, schema or view_class.live_schema(), max_overflow=0)
        view = view_class(store, **projection.extras(self, live))
        upstream = self.applications[view_class.upstream]
        return ProjectionRunner(
            view,
            upstream.recorder,
            upstream.mapper,
            batch_size=self.settings.projection_batch,
            database_url=self.database_url,
        )

    def prepare_read_side(self) -> None:
        """Creates every projection's tables and partitions (what the API reads before the
        runners ever ran): part of migrating."""
        for name in self._projections:
            runner = self.projection(name)
            try:
                runner.start()
            finally:
                runner.view.datastore.close()

    def close(self) -> None:
        for app in self.__dict__.get("applications", {}).values():
            app.close()
        if "pool" in self.__dict__:
            self.pool.close()
        if "live" in self.__dict__:
            self.live.close()
        if "classifier" in self.__dict__:
            self.classifier.close()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings, with the embedded servers started for whatever URL is not configured."""
    settings = Settings.from_env(environ)
    configure_logging(settings.log_format, settings.log_level)
    configure_tracing(settings)
    if settings.prometheus_dir is not None:  # where this process's samples go must exist
        settings.prometheus_dir.mkdir(parents=True, exist_ok=True)
    return embedded.resolve(settings)


def build(
    settings: Settings | None = None,
    *,
    reactions: Iterable[ReactionFactory] = (),
    applications: Mapping[str, type[PixevoApplication]] | None = None,
    run_migrations: bool = True,
) -> Container:
    settings = settings or load_settings()
    if run_migrations:
        migrate(settings.urls()[0])
    container = Container(settings, reactions=reactions, applications=applications)
    if run_migrations:
        container.prepare_read_side()
    return container


def worker_container(
    reactions: Iterable[ReactionFactory] = (),
    applications: Mapping[str, type[PixevoApplication]] | None = None,
) -> Container:
    """The container of a Dramatiq worker process: the broker set, the actors declared."""
    container = build(
        load_settings(), reactions=reactions, applications=applications, run_migrations=False
    )
    container.react_actors  # noqa: B018 - declaring the actors registers them with the broker
    return container
