"""A streaming provider's percentages and previews, relayed to the live feed as they come."""

from __future__ import annotations

from typing import Any

from application.assets import preview_key, preview_url
from application.live import LiveMessage, LivePublisher, ProgressRelay
from application.ports import BlobStore
from application.providers import Output, Progress, ProgressSink, ProviderAdapter, ProviderFailure
from domain.generation import Generation


def progress_sink(
    generation: Generation, adapter: ProviderAdapter, live: LivePublisher, blobs: BlobStore
) -> ProgressSink:
    """What ``adapter.wait`` calls with each update: at most two a second reach the feed, each
    with its preview stored and served from our own URL."""

    def send(percent: float, url: str | None) -> None:
        data: dict[str, Any] = {
            "generation_id": str(generation.id),
            "percent": round(percent, 1),
            "estimated": False,
        }
        if url:
            data["preview_url"] = url
        message = LiveMessage(
            type="progress", generation_id=generation.id, user_id=generation.user_id, data=data
        )
        live.publish([message])

    def store_preview(url: str, number: int) -> str | None:
        try:
            data = adapter.fetch(Output(url, None, 0, 0, "image/jpeg"))
        except ProviderFailure:
            return None  # a missing preview is no reason to stop
        blobs.put(preview_key(generation.id, number), data, "image/jpeg")
        return preview_url(generation.id, number)

    relay = ProgressRelay(send, store_preview=store_preview)

    def on_progress(progress: Progress) -> None:
        if progress.percent >= 0:  # negative: the provider reports no percentage
            relay(min(progress.percent, 99.0), progress.preview_url)

    return on_progress
