from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from tests.support.services import scratch_database, scratch_namespace, server_urls


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return server_urls(tmp_path_factory.mktemp("services"))


@pytest.fixture(scope="session")
def redis_url(servers: tuple[str, str]) -> str:
    return servers[1]


@pytest.fixture
def database_url(servers: tuple[str, str]) -> Iterator[str]:
    """A fresh, empty database of this test's own (dropped afterwards)."""
    with scratch_database(servers[0]) as url:
        yield url


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    with scratch_namespace(redis_url) as namespace:
        yield Settings(
            database_url=database_url,
            redis_url=redis_url,
            data_dir=tmp_path,
            redis_namespace=namespace,
        )


@pytest.fixture
def container(settings: Settings) -> Iterator[Container]:
    container = build(settings)
    yield container
    container.close()


@pytest.fixture(scope="session")
def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The provider simulator as a real HTTP server process (latencies scaled down 50x)."""
    from dataclasses import replace  # noqa: PLC0415

    import httpx  # noqa: PLC0415

    from tests.support.processes import free_port, launcher, wait_for  # noqa: PLC0415

    port = free_port()
    logs = tmp_path_factory.mktemp("simulator")
    log = logs / "simulator.log"
    quiet = launcher(Settings(simulator_port=port), PIXEVO_LOG_LEVEL="WARNING")
    simulator = replace(quiet, latency_scale=0.02)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/_sim/stats").status_code == 200
        except httpx.TransportError:
            return False

    with simulator.running(["simulator"], logs):
        assert wait_for(up, timeout=30), log.read_text()
        yield url


@pytest.fixture
def simulator(simulator_url: str) -> Iterator[str]:
    """The simulator with no faults set, before and after the test."""
    import httpx  # noqa: PLC0415

    httpx.delete(f"{simulator_url}/_sim/faults")
    yield simulator_url
    httpx.delete(f"{simulator_url}/_sim/faults")
