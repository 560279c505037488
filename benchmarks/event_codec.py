"""How much the event codec costs: the library's mapper (JSON transcoder) against msgspec.

    .venv/bin/python -m benchmarks.event_codec [--repeats 7] [--n 20000]

Encodes and decodes a ``CreditAccount.HoldPlaced`` event through the application's mapper (the
codec the event store uses: ``vars(event)`` -> JSON with type tags -> bytes, and back through the
class, running upcasters) and, in the same run, an equivalent frozen ``msgspec.Struct`` through
``msgspec.json`` (the fastest typed codec available to us). The question it answers: does the
codec matter next to the ~1 ms a PostgreSQL transaction costs per command?
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from uuid import UUID, uuid4

import msgspec

from application.billing import BillingApplication
from benchmarks._support import write_result
from domain.billing import CreditAccount


class HoldPlacedStruct(msgspec.Struct, frozen=True, kw_only=True):
    originator_id: UUID
    originator_version: int
    timestamp: datetime
    hold_id: UUID
    amount: int
    cause_type: str
    cause_id: str


def per_event_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()

    app = BillingApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    fields = {
        "hold_id": uuid4(),
        "amount": 40_000,
        "cause_type": "generation",
        "cause_id": str(uuid4()),
    }
    event = CreditAccount.HoldPlaced(
        originator_id=uuid4(), originator_version=7, timestamp=datetime.now(UTC), **fields
    )
    stored = app.mapper.to_stored_event(event)
    struct = HoldPlacedStruct(
        originator_id=event.originator_id, originator_version=7, timestamp=event.timestamp, **fields
    )
    encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder(HoldPlacedStruct)
    raw = encoder.encode(struct)

    cases = {
        "mapper encode": lambda: app.mapper.to_stored_event(event),
        "mapper decode": lambda: app.mapper.to_domain_event(stored),
        "msgspec encode": lambda: encoder.encode(struct),
        "msgspec decode": lambda: decoder.decode(raw),
    }
    results = {
        name: statistics.median(per_event_us(fn, args.n) for _ in range(args.repeats))
        for name, fn in cases.items()
    }
    print(f"{'codec':<16} {'µs/event (median)':>18}")
    for name, value in results.items():
        print(f"{name:<16} {value:>18.2f}")
    round_trip = results["mapper encode"] + results["mapper decode"]
    fast = results["msgspec encode"] + results["msgspec decode"]
    print(
        f"round trip: mapper {round_trip:.2f} µs, msgspec {fast:.2f} µs "
        f"(ratio {round_trip / fast:.1f}x); stored state {len(stored.state)} B vs {len(raw)} B"
    )
    write_result(
        "event_codec", {**results, "stored_bytes": len(stored.state), "msgspec_bytes": len(raw)}
    )


if __name__ == "__main__":
    main()
