"""Models and generations: thin controllers over the catalogue, the use cases and the read model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import structlog
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, Parameter
from litestar.types import ControllerRouterHandler
from psycopg_pool import AsyncConnectionPool

from application.assets import preview_key
from application.catalogue import Catalogue, UnknownModel
from application.generations import GenerationsApplication
from application.inputs import references
from application.normalise import GenerationRequest, Normalised
from application.ports import BlobStore
from application.users import User
from domain.credits import format_credits
from interfaces.http import dto
from interfaces.http.auth import STREAM_OPT, TokenQuery
from interfaces.http.problems import ProblemError
from interfaces.http.ratelimit import RATE_LIMITED
from interfaces.http.views import asset_of, derivative_pending, model_view, view_of, view_of_row
from projections import generation_queries, ledger_queries
from projections.model_timings import Timings

IdempotencyKey = Annotated[
    str | None, HeaderParameter(name="Idempotency-Key", max_length=200, required=False)
]
Status = Annotated[str | None, Parameter(pattern=r"^[a-z0-9.-]{1,100}$")]
Instant = Annotated[str | None, Parameter(max_length=40)]


def _instant(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ProblemError(400, f"{name} must be an RFC 3339 timestamp") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _request(data: dto.CreateGeneration) -> GenerationRequest:
    return GenerationRequest(
        model=data.model,
        prompt=data.prompt,
        negative_prompt=data.negative_prompt,
        params=dict(data.params),
        allow_fallback=data.allow_fallback,
        output_format=data.output_format,
    )


class Models(Controller):
    path = "/v1/models"

    @get("")
    async def models(self, catalogue: NamedDependency[Catalogue]) -> dto.ModelList:
        return dto.ModelList(items=[model_view(spec) for spec in catalogue])

    @get("/{key:str}")
    async def model(self, key: FromPath[str], catalogue: NamedDependency[Catalogue]) -> dto.Model:
        try:
            return model_view(catalogue.get(key))
        except UnknownModel as unknown:
            raise ProblemError(404, str(unknown)) from None


class GenerationServices:
    """What the generation routes use, injected as one dependency: Litestar resolves two or
    more dependencies of a handler concurrently, in a task group per request, which cost the
    busiest route (``POST /v1/generations``) a tenth of its accepted rate
    (``benchmarks.generation_requests``). The write side opens on first use."""

    def __init__(
        self,
        generations: Callable[[], GenerationsApplication],
        pool: AsyncConnectionPool,
        timings: Timings,
        blobs: BlobStore,
    ) -> None:
        self._generations = generations
        self.pool, self.timings, self.blobs = pool, timings, blobs

    @property
    def generations(self) -> GenerationsApplication:
        return self._generations()


Services = NamedDependency[GenerationServices]
#: How long a request for a derivative that is still being made waits for it (they follow a
#: shown image within a moment: a client fetching ``result.url`` at ``completed`` gets it).
DERIVATIVE_WAIT_S = 10.0
DERIVATIVE_POLL_S = 0.05


async def _completed_result(
    services: GenerationServices, user_id: UUID, generation_id: UUID
) -> dict[str, Any] | None:
    row = await generation_queries.generation(services.pool, user_id, generation_id)
    return row["result_metadata"] if row and row["status"] == "completed" else None


async def _quote(services: GenerationServices, asked: GenerationRequest, user: UUID) -> Normalised:
    """The quote; in a thread when image references must be read from the store first."""
    if not references(asked.params):  # nothing but arithmetic: stay on the loop
        return services.generations.quote(asked, user)
    return await asyncio.to_thread(services.generations.quote, asked, user)


async def require_credits(pool: AsyncConnectionPool, user_id: UUID, units: int) -> None:
    """The fast pre-check: 402 at once when the balance read model plainly cannot pay
    ``units`` (the hold decides for certain). Before refusing, it waits for the ledger
    projection to catch up: a grant just made may not be there yet."""
    available = await ledger_queries.available(pool, user_id)
    if available * 10_000 < units:
        await ledger_queries.caught_up(pool, user_id)
        available = await ledger_queries.available(pool, user_id)
    if available * 10_000 < units:
        raise ProblemError(
            402, f"this costs {format_credits(units)} credits; {available:.4f} are available"
        )


class Generations(Controller):
    path = "/v1/generations"

    @post("/quote", status_code=200)
    async def quote(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[dto.CreateGeneration],
        services: Services,
    ) -> dto.Quote:
        normalised = await _quote(services, _request(data), request.user.id)
        return dto.Quote(
            model=normalised.model,
            cost_credits=format_credits(normalised.cost_units),
            params=normalised.params,
            warnings=list(normalised.warnings),
        )

    @post("", status_code=202, opt=RATE_LIMITED)
    async def create(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[dto.CreateGeneration],
        services: Services,
        idempotency_key: IdempotencyKey = None,
    ) -> dto.GenerationView:
        asked = _request(data)
        if idempotency_key is not None:  # a replay answers the first one, whatever the credits
            replayed = await asyncio.to_thread(
                services.generations.replay, request.user.id, asked, idempotency_key
            )
            if replayed is not None:
                return view_of(replayed)
        normalised = await _quote(services, asked, request.user.id)
        await require_credits(services.pool, request.user.id, normalised.cost_units)
        generation, _ = await asyncio.to_thread(
            services.generations.request, request.user.id, asked, idempotency_key, normalised
        )
        structlog.contextvars.bind_contextvars(generation_id=str(generation.id))
        return view_of(generation)

    @get("/{generation_id:uuid}")
    async def generation(
        self,
        request: Request[User, Any, Any],
        generation_id: FromPath[UUID],
        services: Services,
    ) -> dto.GenerationView:
        row = await generation_queries.generation(services.pool, request.user.id, generation_id)
        if row is None:  # the read model may not have it yet: the write side answers (or 404s)
            state = await asyncio.to_thread(
                services.generations.state, request.user.id, generation_id
            )
            return view_of(state)
        view = view_of_row(row)
        if row["status"] == "running":  # it has been running since its last change
            guess = await services.timings.estimate(row["model_key"], row["updated_at"])
            view.progress = dto.Progress(percent=guess.percent, estimated=True)
        return view

    @get("")
    async def generations(
        self,
        request: Request[User, Any, Any],
        services: Services,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Parameter(max_length=200)] = None,
        status: Status = None,
        model: Status = None,
        since: Instant = None,
        until: Instant = None,
    ) -> dto.GenerationList:
        try:
            rows, next_cursor = await generation_queries.page(
                services.pool,
                request.user.id,
                limit,
                cursor,
                status=status,
                model=model,
                since=_instant("since", since),
                until=_instant("until", until),
            )
        except ledger_queries.BadCursor as bad:
            raise ProblemError(400, str(bad)) from None
        return dto.GenerationList(items=[view_of_row(r) for r in rows], next_cursor=next_cursor)

    @post("/{generation_id:uuid}/cancel", status_code=202)
    async def cancel(
        self,
        request: Request[User, Any, Any],
        generation_id: FromPath[UUID],
        services: Services,
    ) -> dto.GenerationView:
        generations = services.generations
        structlog.contextvars.bind_contextvars(generation_id=str(generation_id))
        generation = await asyncio.to_thread(generations.cancel, request.user.id, generation_id)
        return view_of(generation)

    @get("/{generation_id:uuid}/assets/{kind:str}")
    async def asset(
        self,
        request: Request[User, Any, Any],
        generation_id: FromPath[UUID],
        kind: FromPath[str],
        services: Services,
    ) -> Response[bytes]:
        """The result (``original``) or a derivative; a blocked result is never served."""
        meta = await _completed_result(services, request.user.id, generation_id)
        waited_until = time.monotonic() + DERIVATIVE_WAIT_S
        while meta and derivative_pending(meta, kind):  # shown a moment before it was made
            if time.monotonic() >= waited_until:
                raise ProblemError(
                    503,
                    f"generation {generation_id}'s {kind} is still being made (the live feeds "
                    "send 'derivatives' when it is there)",
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(DERIVATIVE_POLL_S)
            meta = await _completed_result(services, request.user.id, generation_id)
        found = asset_of(meta, kind) if meta else None
        if found is None:
            raise ProblemError(404, f"generation {generation_id} has no {kind[:40]} to serve")
        key, media_type = found
        data = await asyncio.to_thread(services.blobs.get, key)
        # short: a rescreen may block it later, and a browser would keep showing it this long
        return Response(
            data, media_type=media_type, headers={"Cache-Control": "private, max-age=300"}
        )

    @get("/{generation_id:uuid}/previews/{number:int}", opt=STREAM_OPT)
    async def preview(
        self,
        request: Request[User, Any, Any],
        generation_id: FromPath[UUID],
        number: FromPath[int],
        services: Services,
        token: TokenQuery = None,  # noqa: ARG002 - read by the authentication middleware
    ) -> Response[bytes]:
        """A streaming provider's preview, as the ``preview_url`` of a ``progress`` event."""
        row = await generation_queries.generation(services.pool, request.user.id, generation_id)
        if row is None or row["status"] == "blocked":
            raise ProblemError(404, f"no generation {generation_id}")
        try:
            data = await asyncio.to_thread(services.blobs.get, preview_key(generation_id, number))
        except (FileNotFoundError, ValueError):
            raise ProblemError(404, f"generation {generation_id} has no preview {number}") from None
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"}
        )


ROUTES: list[ControllerRouterHandler] = [Models, Generations]
