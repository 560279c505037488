"""The whole platform for integration tests: worker, dispatcher and projection processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from infrastructure.settings import Settings
from interfaces.cli.launch import WORKER_MODULE, with_simulator
from tests.support.processes import free_port, launcher, wait_healthy

__all__ = ["platform_processes", "whole_platform", "with_simulator"]


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


@contextmanager
def whole_platform(settings: Settings, simulator: str, logs: Path, **changes: Any) -> Iterator[str]:
    """Every process ``pixevo up`` starts but the simulator (the session's), the API among
    them, logging JSON to ``logs``; yields the API's base URL. ``changes``: to the settings."""
    port = free_port()
    settings = replace(
        with_simulator(settings, simulator), http_port=port, log_format="json", **changes
    )
    base = f"http://127.0.0.1:{port}"
    with launcher(settings, PIXEVO_LOG_LEVEL="INFO").running(
        ("api", "worker", "dispatcher", "projections"), logs
    ):
        wait_healthy(base, logs / "api.log", timeout=60)
        yield base
