"""The pure parts of live progress: the estimate curve, the progress relay, stream tokens,
and the feed's row round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import pytest

from application.live import AT_P95, CEILING, LiveMessage, ProgressRelay, decode, encode, estimate
from infrastructure.tokens import InvalidStreamToken, StreamTokens, stream_secret
from projections.generations import feed_entry, row_from_json, row_to_json

SECRET = b"s" * 48


@pytest.mark.parametrize(("p50", "p95"), [(1.8, 4.0), (6.0, 12.0), (0.001, 0.005), (90, 200)])
def test_the_estimate_rises_fast_then_slowly_and_never_reaches_100(p50: float, p95: float) -> None:
    times = [p95 * i / 100 for i in range(0, 1001)]  # up to ten times P95
    percents = [estimate(t, p50, p95).percent for t in times]
    assert percents == sorted(percents)
    assert percents[0] == 0
    assert max(percents) < 100
    assert max(percents) < CEILING
    assert estimate(p95, p50, p95).percent == pytest.approx(AT_P95, abs=0.1)
    assert 40 < estimate(p50, p50, p95).percent < 75  # about half way at the median
    # fast first: the first tenth of P50 moves the bar more than the tenth before P95
    early = estimate(p50 / 10, p50, p95).percent
    late = estimate(p95, p50, p95).percent - estimate(p95 * 0.9, p50, p95).percent
    assert early > late


def test_past_p95_the_estimate_says_it_is_taking_longer() -> None:
    assert not estimate(3.9, 1.8, 4.0).slow
    slow = estimate(4.1, 1.8, 4.0)
    assert slow.slow
    assert AT_P95 <= slow.percent < CEILING


def test_the_relay_passes_at_most_two_updates_a_second_and_keeps_a_dropped_preview() -> None:
    now = [0.0]
    sent: list[tuple[float, str | None]] = []
    stored: list[tuple[str, int]] = []

    def store(url: str, number: int) -> str:
        stored.append((url, number))
        return f"/preview/{number}"

    relay = ProgressRelay(
        lambda p, u: sent.append((p, u)), store_preview=store, clock=lambda: now[0]
    )
    for step in range(20):  # ten updates a second for two seconds
        now[0] = step / 10
        relay(step * 5.0, f"https://provider/p/{step}" if step == 3 else None)
    assert len(sent) == 4  # at 0.0, 0.5, 1.0, 1.5
    assert [p for p, _ in sent] == [0.0, 25.0, 50.0, 75.0]
    # the preview arrived with a dropped update (0.3 s) and travelled with the next one (0.5 s)
    assert sent[1] == (25.0, "/preview/1")
    assert stored == [("https://provider/p/3", 1)]


def test_messages_round_trip() -> None:
    message = LiveMessage(
        type="status",
        generation_id=uuid4(),
        user_id=uuid4(),
        data={"status": "running"},
        position=9,
    )
    assert decode(encode(message)) == message


def test_stream_tokens_name_their_user_and_expire() -> None:
    tokens = StreamTokens(SECRET)
    user = uuid4()
    token, expires = tokens.issue(user)
    assert tokens.verify(token) == user
    assert expires > datetime.now(UTC)
    old, _ = tokens.issue(user, now=datetime.now(UTC) - timedelta(minutes=6))
    with pytest.raises(InvalidStreamToken, match="expired"):
        tokens.verify(old)
    with pytest.raises(InvalidStreamToken, match="not valid"):
        StreamTokens(b"t" * 48).verify(token)  # signed with another secret
    with pytest.raises(InvalidStreamToken):
        tokens.verify(token[:-3] + "abc")
    with pytest.raises(ValueError, match="32 bytes"):
        StreamTokens(b"short")


def test_the_data_dir_secret_is_made_once_and_shared(tmp_path: object) -> None:
    from pathlib import Path  # noqa: PLC0415

    data = Path(str(tmp_path))
    first = stream_secret(None, data)
    assert stream_secret(None, data) == first
    assert len(first) == 64  # 48 random bytes, URL-safe base64
    assert (data / "stream-secret").stat().st_mode & 0o077 == 0
    assert stream_secret("configured-" + "x" * 30, data) == b"configured-" + b"x" * 30


def test_a_final_feed_entry_carries_the_whole_row_and_decodes_back() -> None:
    from domain.generation import Generation  # noqa: PLC0415

    now = datetime.now(UTC)
    row = {
        "id": uuid4(),
        "user_id": uuid4(),
        "status": "completed",
        "model_key": "flux-schnell",
        "provider": "replicate",
        "created_at": now,
        "updated_at": now,
        "completed_at": now,
        "cost_credits": Decimal("0.3000"),
        "charged_credits": Decimal("0.3000"),
        "params": {"width": 1024},
        "notice": None,
        "fallback_from": None,
    }
    event = Generation.Completed(
        originator_id=row["id"], originator_version=6, timestamp=now, charged=3000, from_cache=None
    )
    kind, data = feed_entry(row, event)
    assert kind == "completed"
    back = row_from_json(data)
    assert back["id"] == row["id"]
    assert back["cost_credits"] == Decimal("0.3000")
    assert back["completed_at"] == now
    assert row_to_json(row)["params"] == {"width": 1024}


def _status(position: int, generation_id: object, status: str = "running") -> LiveMessage:
    return LiveMessage(
        type="status",
        generation_id=generation_id,  # type: ignore[arg-type]
        user_id=uuid4(),
        data={"status": status, "model": "flux-schnell", "at": datetime.now(UTC).isoformat()},
        position=position,
    )


def test_a_live_message_that_overtook_a_lost_one_does_not_hide_it() -> None:
    from interfaces.http.streams import _Seen  # noqa: PLC0415

    gid = uuid4()
    seen = _Seen(10)
    assert seen.take_all([_status(11, gid)])[0].id == 11  # live
    # 12 was lost (Redis); 13 arrives live
    assert [o.id for o in seen.take_all([_status(13, gid)])] == [13]
    # the catch-up reads from what the store gave, not from the highest sent: 12 is found,
    # sent once, with the client's resume point kept at 13; 11 and 13 are not repeated
    outs = seen.caught_up([_status(11, gid), _status(12, gid), _status(13, gid)])
    assert [(o.type, o.id) for o in outs] == [("status", 13)]
    assert outs[0].data["status"] == "running"
    assert seen.read_to == 13
    assert seen.sent == set()
    assert seen.take_all([_status(12, gid), _status(13, gid)]) == []  # duplicates, live
    assert [o.id for o in seen.take_all([_status(14, gid)])] == [14]


def _whole(
    position: int, kind: str, completed_at: datetime, *, cached: bool = False
) -> LiveMessage:
    data = {"completed_at": completed_at.isoformat(), "served_from_cache": cached}
    return LiveMessage(type=kind, user_id=uuid4(), data=data, position=position)


def test_a_completed_stream_waits_for_its_derivatives_for_a_while() -> None:
    from interfaces.http.streams import DERIVATIVES_WAIT, _ended, _Seen  # noqa: PLC0415

    now = datetime.now(UTC)
    running = _status(1, uuid4())
    completed = _whole(2, "completed", now)
    assert _ended([running, completed]) is None  # its derivatives are coming
    seen = _Seen(0)
    for message in (running, completed):
        seen.note(message)
    assert not seen.finished
    assert not seen.waited_enough()
    seen.note(_whole(3, "derivatives", now))
    assert seen.finished
    ended = _ended([running, completed, _whole(3, "derivatives", now)])
    assert ended is not None
    assert (ended.type, ended.position) == ("completed", 3)  # the end, as it is now
    # served from the cache: nothing follows; a completion from long ago: nothing will
    assert _ended([_whole(2, "completed", now, cached=True)]) is not None
    assert _ended([_whole(2, "completed", now - DERIVATIVES_WAIT * 2)]) is not None
    stale = _Seen(0)
    stale.note(_whole(2, "completed", now - DERIVATIVES_WAIT * 2))
    assert stale.waited_enough()
    failed = _whole(2, "failed", now)
    assert _ended([failed]) == failed
