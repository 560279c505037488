"""The aggregate cache hands out shallow copies of generations (``Generation.__deepcopy__``):
safe only while no event changes a value in place. These hold every event to that."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from domain.generation import Generation


def requested() -> Generation:
    return Generation.request(
        generation_id=uuid4(),
        user_id=uuid4(),
        model="flux-schnell",
        provider="replicate",
        prompt="a fox",
        negative_prompt=None,
        params={"seed": 7, "width": 512},
        output_format="png",
        quote=3000,
        allow_fallback=True,
        fingerprint="f",
        request_hash="h",
    )


def every_change(generation: Generation) -> None:
    """Every event a generation can have, in an order it can have them."""
    now = datetime.now(UTC)
    generation.fund(uuid4())
    generation.queue()
    generation.submitted(None, 1)
    generation.defer("down", now=now, retry_at=now, give_up_at=now + timedelta(hours=1))
    generation.fall_back(
        "flux-dev", "fal", "down", params={"seed": 7}, negative_prompt=None, cost=1
    )
    generation.submitted("job", 2)
    generation.produced("k", 512, 512, "image/png", 10, 5)
    artefact = {"kind": "preview", "storage_key": "p", "width": 1, "height": 1}
    generation.process([artefact], "h", 0.5, 0.1, "c")
    generation.complete(1)
    generation.derived([{**artefact, "kind": "full"}])
    generation.block("rescreen", "r", "v", score=0.9)
    generation.reinstate("v2", 0.1)


def snapshot(generation: Generation) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in vars(generation).items() if k != "_pending_events"})


def test_changing_a_copy_leaves_the_cached_generation_as_it_was() -> None:
    cached = requested()
    cached.collect_events()
    before = snapshot(cached)
    handed_out = copy.deepcopy(cached)
    assert handed_out is not cached
    every_change(handed_out)
    assert snapshot(cached) == before
    assert cached.pending_events == []
    assert len(handed_out.pending_events) == 12
    assert (cached.status, handed_out.status) == ("requested", "completed")


def test_a_copy_has_the_same_state() -> None:
    generation = requested()
    every_change(generation)
    assert snapshot(copy.deepcopy(generation)) == snapshot(generation)
