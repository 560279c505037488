"""Hand-written fakes of small ports, shared by the unit tests."""

from __future__ import annotations


class MemoryBlobs:
    """The blob store port, in a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.data[key] = data

    def get(self, key: str) -> bytes:
        return self.data[key]
