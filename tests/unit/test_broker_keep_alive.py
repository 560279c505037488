"""The keep-alive's rounds: maintenance only after Redis has answered for a quiet period."""

from __future__ import annotations

from infrastructure.broker import KeepAlive


class FakeBroker:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.down = False

    def heartbeat(self) -> None:
        self.record("heartbeat")

    def maintain(self) -> None:
        self.record("maintain")

    def record(self, call: str) -> None:
        self.calls.append(call)
        if self.down:
            raise ConnectionError("Redis is unreachable")


def rounds(keep_alive: KeepAlive, broker: FakeBroker, times: list[float]) -> list[str]:
    broker.calls.clear()
    for now in times:
        keep_alive.tick(broker, now)
    return broker.calls


def test_a_new_worker_only_refreshes_its_heartbeat_for_one_quiet_period() -> None:
    keep_alive, broker = KeepAlive(interval_s=0.5, quiet_s=3.0), FakeBroker()
    keep_alive.contact_since = 100.0  # booted
    assert rounds(keep_alive, broker, [100.5, 102.5]) == ["heartbeat", "heartbeat"]
    assert rounds(keep_alive, broker, [103.0, 103.5]) == ["maintain", "maintain"]


def test_after_losing_redis_it_waits_a_quiet_period_before_maintaining_again() -> None:
    """Every worker's heartbeat went stale during the outage: maintaining the moment Redis
    answers again would take the live ones for dead and run their messages twice."""
    keep_alive, broker = KeepAlive(interval_s=0.5, quiet_s=3.0), FakeBroker()
    keep_alive.contact_since = 0.0
    assert rounds(keep_alive, broker, [10.0]) == ["maintain"]
    broker.down = True
    assert rounds(keep_alive, broker, [10.5, 11.0]) == ["maintain", "heartbeat"]  # survives
    broker.down = False
    assert rounds(keep_alive, broker, [20.0, 22.5]) == ["heartbeat", "heartbeat"]
    assert rounds(keep_alive, broker, [23.0]) == ["maintain"]
