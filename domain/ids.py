"""Time-ordered ids (UUIDv7, RFC 9562): a read query can prune month partitions by id alone."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from uuid import UUID


def uuid7(at_ms: int | None = None) -> UUID:
    """48 bits of Unix milliseconds, version 7, 74 random bits."""
    ms = int(time.time() * 1000) if at_ms is None else at_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    return UUID(int=value)


def uuid7_time(value: UUID) -> datetime:
    """When a UUIDv7 was made (to the millisecond)."""
    return datetime.fromtimestamp((value.int >> 80) / 1000, tz=UTC)
