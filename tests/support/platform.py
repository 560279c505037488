"""The whole platform for integration tests: worker, dispatcher and projection processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from infrastructure.settings import Settings
from tests.support.processes import child_env, dramatiq_worker, running


def with_simulator(settings: Settings, simulator_url: str) -> Settings:
    providers = {
        name: (f"{simulator_url}/{name}", f"sim-{name}-key")
        for name in ("replicate", "fal", "openai")
    }
    return replace(settings, providers=providers, classifier_url=f"{simulator_url}/moderation")


@contextmanager
def platform_processes(
    settings: Settings, logs: Path, *, workers: int = 1, worker_module: str = "interfaces.worker"
) -> Iterator[dict[str, Path]]:
    """Starts the processes ``pixevo up`` starts, but the API (tests use it in-process)."""
    env = child_env(settings, PIXEVO_LOG_LEVEL="INFO")
    pixevo = [sys.executable, "-m", "interfaces.cli"]
    commands = {
        "worker": dramatiq_worker(worker_module, processes=workers, threads=8),
        "dispatcher": [*pixevo, "dispatcher"],
        "projections": [*pixevo, "projections", "run"],
    }
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(running(argv, env, logs / f"{name}.log"))
            for name, argv in commands.items()
        }
