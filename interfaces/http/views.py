"""How the API shows models and generations: read rows, and the write side's answers to a
create or a cancel (so they are readable at once), as DTOs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec

from application import assets
from application.catalogue import ModelSpec
from application.generations import GenerationState
from application.imaging import DERIVED_KINDS
from domain.credits import format_credits
from interfaces.http import dto


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
    """The result as the API shows it: the processed original, and every artefact the pipeline
    made (the original included) as a derivative."""
    if not meta:
        return None
    processed = processed or {}
    artefacts = processed.get("artefacts") or []
    original = next((a for a in artefacts if a["kind"] == "original"), None)
    if original is None:  # made before the pipeline re-encoded originals (or any videos)
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
        ],
    )


def derivative_pending(meta: dict[str, Any], kind: str) -> bool:
    """Whether ``kind`` is one of a shown image's derivatives that are still being made."""
    processed = meta.get("processed") or {}
    have = {a["kind"] for a in processed.get("artefacts") or []}
    return (
        bool(processed)
        and not processed.get("derived")
        and kind in DERIVED_KINDS
        and not have & set(DERIVED_KINDS)  # results from before they followed have them all
    )


def asset_of(meta: dict[str, Any], kind: str) -> tuple[str, str] | None:
    """(storage key, media type) of one of a result's artefacts; the raw result for an
    ``original`` that was never processed (results from before the pipeline made one)."""
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
        waiting=msgspec.convert(row["waiting"], dto.Waiting) if row.get("waiting") else None,
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
