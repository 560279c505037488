"""Starting the platform's real processes from tests, through the product's launcher."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from infrastructure.settings import Settings
from interfaces.cli.launch import Launcher, stop

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launcher(settings: Settings, **extra_env: str) -> Launcher:
    """The launcher for this checkout's code: run from its root, with it on ``PYTHONPATH``."""
    return Launcher(settings, extra_env={"PYTHONPATH": str(ROOT), **extra_env}, cwd=ROOT)


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """A platform process's environment, with workers polling as ``pixevo worker`` runs them."""
    return launcher(settings, **extra).environment("worker")


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Any command in a session of its own, output to ``log``; stopped as the launcher stops."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop([process])


def dramatiq_worker(module: str, *, processes: int = 1, threads: int = 4) -> list[str]:
    worker = Launcher(
        Settings(), worker_module=module, worker_processes=processes, worker_threads=threads
    )
    return worker.argv("worker")


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def wait_healthy(base: str, log: Path, timeout: float = 30) -> None:
    """Waits until the API at ``base`` answers ``/health`` (its log in the failure if not)."""

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/health").status_code == 200
        except httpx.TransportError:
            return False

    assert wait_for(healthy, timeout=timeout), log.read_text() if log.exists() else log


def start_api(stack: ExitStack, settings: Settings, log: Path) -> str:
    """``pixevo api`` for ``settings`` on a free port, stopped with ``stack``; its base URL."""
    port = free_port()
    env = child_env(settings, PIXEVO_HTTP_PORT=str(port))
    stack.enter_context(running([sys.executable, "-m", "interfaces.cli", "api"], env, log))
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base, log)
    return base
