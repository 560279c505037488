"""Models and generations: thin controllers over the catalogue, the use cases and the read model."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, Parameter

from application import assets
from application.catalogue import ModelSpec, UnknownModel
from application.generations import GenerationState
from application.normalise import GenerationRequest
from application.users import User
from domain.credits import format_credits
from interfaces.bootstrap import Container
from interfaces.http import dto
from interfaces.http.problems import ProblemError
from projections import generation_queries, ledger_queries

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


def model_view(spec: ModelSpec) -> dto.Model:
    caps = spec.capabilities
    return dto.Model(
        key=spec.key,
        name=spec.name,
        kind=spec.kind,
        provider=spec.provider,
        capabilities=dto.Capabilities(
            aspect_ratios=list(caps.aspect_ratios) if caps.aspect_ratios else None,
            sizes=dto.SizeRange(caps.sizes.min, caps.sizes.max, caps.sizes.multiple_of)
            if caps.sizes
            else None,
            max_pixels=caps.max_pixels,
            negative_prompt=caps.negative_prompt,
            seed=caps.seed,
            deterministic=caps.deterministic,
            streaming=caps.streaming,
        ),
        pricing=dto.Pricing(unit=spec.pricing.unit, credits=f"{spec.pricing.credits:.4f}"),
        timing=dto.Timing(p50_ms=spec.timing.p50_ms, p95_ms=spec.timing.p95_ms),
        fallbacks=list(spec.fallbacks),
    )


def _links(generation_id: UUID) -> dto.Links:
    return dto.Links(
        self=assets.generation_url(generation_id), events=assets.events_url(generation_id)
    )


def _result(
    generation_id: UUID, meta: dict[str, Any] | None, processed: dict[str, Any] | None
) -> dto.Result | None:
    """The result as the API shows it: the processed original and its derivatives."""
    if not meta:
        return None
    processed = processed or {}
    artefacts = processed.get("artefacts") or []
    original = next((a for a in artefacts if a["kind"] == "original"), None)
    if original is None:  # a video, or made before post-processing existed
        original = {
            "width": meta["width"],
            "height": meta["height"],
            "format": str(meta.get("content_type", "image/png")).split("/")[-1],
        }
    return dto.Result(
        url=assets.asset_url(generation_id, "original"),
        width=int(original["width"]),
        height=int(original["height"]),
        format=str(original["format"]),
        blurhash=processed.get("blurhash"),
        quality_score=processed.get("quality_score"),
        nsfw_score=processed.get("nsfw_score"),
        derivatives=[
            dto.Derivative(
                kind=a["kind"],
                url=assets.asset_url(generation_id, a["kind"]),
                width=a["width"],
                height=a["height"],
                format=a["format"],
                bytes=a["bytes"],
            )
            for a in artefacts
            if a["kind"] != "original"
        ],
    )


def asset_of(meta: dict[str, Any], kind: str) -> tuple[str, str] | None:
    """(storage key, media type) of one of a result's artefacts; the raw result for an
    ``original`` that was never processed (videos)."""
    for artefact in (meta.get("processed") or {}).get("artefacts") or []:
        if artefact["kind"] == kind:
            return str(artefact["storage_key"]), str(artefact["media_type"])
    if kind == "original":
        return str(meta["storage_key"]), str(meta["content_type"])
    return None


def view_of_row(row: dict[str, Any]) -> dto.GenerationView:
    done = row["status"] == "completed"
    return dto.GenerationView(
        id=row["id"],
        status=row["status"],
        model=row["model_key"],
        provider=row["provider"],
        prompt=row["prompt"],
        negative_prompt=row["negative_prompt"],
        params=row["params"],
        cost_credits=f"{row['cost_credits']:.4f}",
        charged_credits=f"{row['charged_credits']:.4f}"
        if row["charged_credits"] is not None
        else None,
        progress=None,
        result=_result(
            row["id"], row["result_metadata"], (row["result_metadata"] or {}).get("processed")
        )
        if done
        else None,
        error=dto.ErrorInfo(**row["error"]) if row["error"] else None,
        notice=row["notice"],
        served_from_cache=row["served_from_cache"],
        fallback_from=row["fallback_from"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        links=_links(row["id"]),
    )


def view_of(generation: GenerationState) -> dto.GenerationView:
    return dto.GenerationView(
        id=generation.id,
        status=generation.status,
        model=generation.model,
        provider=generation.provider,
        prompt=generation.prompt,
        negative_prompt=generation.negative_prompt,
        params=generation.params,
        cost_credits=format_credits(generation.quote),
        charged_credits=format_credits(generation.charged)
        if generation.charged is not None
        else None,
        progress=None,
        result=_result(generation.id, generation.result, generation.processed)
        if generation.status == "completed"
        else None,
        error=dto.ErrorInfo(**generation.error) if generation.error else None,
        served_from_cache=generation.from_cache is not None,
        fallback_from=generation.fallback_from,
        created_at=generation.created_on,
        completed_at=None,
        links=_links(generation.id),
    )


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
    async def models(self, container: NamedDependency[Container]) -> dto.ModelList:
        return dto.ModelList(items=[model_view(spec) for spec in container.catalogue])

    @get("/{key:str}")
    async def model(self, key: FromPath[str], container: NamedDependency[Container]) -> dto.Model:
        try:
            return model_view(container.catalogue.get(key))
        except UnknownModel as unknown:
            raise ProblemError(404, str(unknown)) from None


class Generations(Controller):
    path = "/v1/generations"

    @post("/quote", status_code=200)
    async def quote(
        self, data: JSONBody[dto.CreateGeneration], container: NamedDependency[Container]
    ) -> dto.Quote:
        normalised = container.generations.quote(_request(data))
        return dto.Quote(
            model=normalised.model,
            cost_credits=format_credits(normalised.cost_units),
            params=normalised.params,
            warnings=list(normalised.warnings),
        )

    @post("", status_code=202)
    async def create(
        self,
        request: Request[User, Any, Any],
        state: State,
        data: JSONBody[dto.CreateGeneration],
        container: NamedDependency[Container],
        idempotency_key: IdempotencyKey = None,
    ) -> dto.GenerationView:
        asked = _request(data)
        normalised = container.generations.quote(asked)
        available = await ledger_queries.available(state.pool, request.user.id)
        if available * 10_000 < normalised.cost_units:  # the fast pre-check
            raise ProblemError(
                402,
                f"this costs {format_credits(normalised.cost_units)} "
                f"credits; {available:.4f} are available",
            )
        generation, _ = await asyncio.to_thread(
            container.generations.request, request.user.id, asked, idempotency_key, normalised
        )
        return view_of(generation)

    @get("/{generation_id:uuid}")
    async def generation(
        self, request: Request[User, Any, Any], state: State, generation_id: FromPath[UUID]
    ) -> dto.GenerationView:
        row = await generation_queries.generation(state.pool, request.user.id, generation_id)
        if row is None:
            raise ProblemError(404, f"no generation {generation_id}")
        view = view_of_row(row)
        if row["status"] == "running":  # it has been running since its last change
            guess = await state.timings.estimate(row["model_key"], row["updated_at"])
            view.progress = dto.Progress(percent=guess.percent, estimated=True)
        return view

    @get("")
    async def generations(
        self,
        request: Request[User, Any, Any],
        state: State,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Parameter(max_length=200)] = None,
        status: Status = None,
        model: Status = None,
        since: Instant = None,
        until: Instant = None,
    ) -> dto.GenerationList:
        try:
            rows, next_cursor = await generation_queries.page(
                state.pool,
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
        container: NamedDependency[Container],
    ) -> dto.GenerationView:
        generation = await asyncio.to_thread(
            container.generations.cancel, request.user.id, generation_id
        )
        return view_of(generation)

    @get("/{generation_id:uuid}/assets/{kind:str}")
    async def asset(
        self,
        request: Request[User, Any, Any],
        state: State,
        generation_id: FromPath[UUID],
        kind: FromPath[str],
        container: NamedDependency[Container],
    ) -> Response[bytes]:
        """The result (``original``) or a derivative; a blocked result is never served."""
        row = await generation_queries.generation(state.pool, request.user.id, generation_id)
        meta = row["result_metadata"] if row and row["status"] == "completed" else None
        found = asset_of(meta, kind) if meta else None
        if found is None:
            raise ProblemError(404, f"generation {generation_id} has no {kind[:40]} to serve")
        key, media_type = found
        data = await asyncio.to_thread(container.blobs.get, key)
        # short: a rescreen may block it later, and a browser would keep showing it this long
        return Response(
            data, media_type=media_type, headers={"Cache-Control": "private, max-age=300"}
        )


ROUTES = [Models, Generations]
