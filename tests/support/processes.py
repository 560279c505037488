"""Starting the platform's real processes from tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from infrastructure.broker import WORKER_POLL_MS
from infrastructure.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """A platform process's environment, with workers polling as ``pixevo worker`` runs them."""
    return {
        "dramatiq_worker_timeout": str(WORKER_POLL_MS),
        **os.environ,
        **settings.as_env(),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def dramatiq_worker(module: str, *, processes: int = 1, threads: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dramatiq",
        module,
        "--skip-logging",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
