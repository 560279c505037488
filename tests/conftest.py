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
