"""How reactions are routed to Dramatiq queues, in-process on a stub broker."""

from __future__ import annotations

import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import build

pytestmark = pytest.mark.integration


def test_image_processing_has_a_queue_of_its_own(settings: Settings) -> None:
    """CPU-bound pipeline work never occupies the threads that wait on providers."""
    from dramatiq.brokers.stub import StubBroker  # noqa: PLC0415

    from interfaces.bootstrap import REACTIONS as PLATFORM  # noqa: PLC0415

    container = build(settings, reactions=PLATFORM)
    try:
        stub = StubBroker()
        container.__dict__["broker"] = stub  # declare the actors on a broker we can inspect
        assert set(container.react_actors) == {"reactions", "images"}
        container.enqueue_reaction("process_result", "generations", 7)
        container.enqueue_reaction("generate", "generations", 8)
        container.enqueue_reaction("derive_result", "generations", 9)
        assert stub.queues["images"].qsize() == 2
        assert stub.queues["reactions"].qsize() == 1
        container.enqueue_reaction("fund_generation", "generations", 10)  # a former name
        assert stub.queues["reactions"].qsize() == 2
        message = stub.queues["images"].get_nowait()
        assert b'"actor_name":"react_images"' in message.replace(b" ", b"")
    finally:
        container.close()
