"""The whole platform for integration tests: worker, dispatcher and projection processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from infrastructure.settings import Settings
from interfaces.cli.launch import WORKER_MODULE, with_simulator
from tests.support.processes import launcher

__all__ = ["platform_processes", "with_simulator"]


@contextmanager
def platform_processes(
    settings: Settings, logs: Path, *, workers: int = 1, worker_module: str = WORKER_MODULE
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Starts the processes ``pixevo up`` starts, but the API (tests use it in-process)."""
    platform = replace(
        launcher(settings, PIXEVO_LOG_LEVEL="INFO"),
        worker_module=worker_module,
        worker_processes=workers,
    )
    with platform.running(("worker", "dispatcher", "projections"), logs) as processes:
        yield processes
