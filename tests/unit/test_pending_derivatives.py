"""An image shown before its derivatives exist: those answer 'being made', not 'none'."""

from __future__ import annotations

from typing import Any

from interfaces.http.views import asset_of, derivative_pending


def meta(kinds: tuple[str, ...], **processed: Any) -> dict[str, Any]:
    artefacts = [{"kind": k, "storage_key": f"g/{k}", "media_type": "image/webp"} for k in kinds]
    return {
        "storage_key": "g/raw.png",
        "content_type": "image/png",
        "processed": {"artefacts": artefacts, **processed},
    }


def test_a_shown_image_waits_for_its_derivatives_and_never_serves_the_raw_file_meanwhile() -> None:
    shown = meta(("thumb", "preview"))
    assert derivative_pending(shown, "original")
    assert derivative_pending(shown, "full")
    assert not derivative_pending(shown, "preview")
    assert asset_of(shown, "preview") == ("g/preview", "image/webp")


def test_once_derived_nothing_is_pending_whatever_could_be_made() -> None:
    done = meta(("thumb", "preview", "social", "full", "modern", "original"), derived=True)
    assert not derivative_pending(done, "original")
    assert asset_of(done, "original") == ("g/original", "image/webp")
    failed = meta(("thumb", "preview"), derived=True)  # none could be made
    assert not derivative_pending(failed, "full")
    assert asset_of(failed, "full") is None


def test_results_from_before_derivatives_followed_and_videos_are_complete() -> None:
    legacy = meta(("thumb", "preview", "social", "full", "modern", "original"))
    assert not derivative_pending(legacy, "full")
    video = meta(("thumb", "poster", "original"))
    assert not derivative_pending(video, "full")
    assert not derivative_pending({"storage_key": "g/raw.png", "content_type": "x"}, "original")
