"""The platform's processes: their command lines and environment, known in this one place.

``pixevo up`` supervises all of them; the tests and the benchmarks start the ones they need
through the same :class:`Launcher`, with what they vary: which processes, the worker's module
(tests add a probe reaction), processes and threads, the simulator's latency, ports (through the
settings), the log files and a few extra environment variables.

    launcher = Launcher(settings, worker_threads=4, latency_scale=0)
    with launcher.running(["simulator", "dispatcher", "worker"], logs=tmp) as processes:
        ...

Every process gets this process's environment, then ``settings.as_env()``, then
``extra_env``; each runs in its own session (process group), so that stopping it also stops
the processes it forked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

from infrastructure.broker import WORKER_POLL_MS
from infrastructure.settings import Settings

PROCESSES = ("api", "projections", "dispatcher", "worker", "simulator")
WORKER_MODULE = "interfaces.worker"
SIMULATED_PROVIDERS = ("replicate", "fal", "openai")
GRACE_S = 15.0
#: A worker's threads: well above a user's cap on generations at providers (8 by default), so
#: that one user's calls in flight never hold every thread while others' messages wait.
WORKER_THREADS = 16


def with_simulator(settings: Settings, simulator_url: str) -> Settings:
    """The settings with every provider and the classifier pointed at a simulator's URL."""
    providers = {
        name: (f"{simulator_url}/{name}", f"sim-{name}-key") for name in SIMULATED_PROVIDERS
    }
    return replace(settings, providers=providers, classifier_url=f"{simulator_url}/moderation")


def pixevo(*args: str) -> list[str]:
    """The command line of ``pixevo ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "interfaces.cli", *args]


@dataclass(frozen=True, slots=True)
class Launcher:
    """How to start each of the platform's processes for ``settings``.

    ``worker_timeout_ms`` sets Dramatiq's ``dramatiq_worker_timeout`` for the worker; ``None``
    keeps the environment's, else the platform's :data:`WORKER_POLL_MS`. ``projections`` names
    the runners ``projections run`` keeps up to date (empty: all). ``cwd`` is where the
    processes start (default: this process's).
    """

    settings: Settings
    worker_module: str = WORKER_MODULE
    worker_processes: int = 1
    worker_threads: int = WORKER_THREADS
    worker_queues: tuple[str, ...] = ()
    worker_timeout_ms: int | None = None
    api_workers: int = 1
    projections: tuple[str, ...] = ()
    latency_scale: float = 1.0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def argv(self, name: str) -> list[str]:
        """The command line of the process ``name`` (one of :data:`PROCESSES`)."""
        if name == "api":
            return pixevo("api", "--workers", str(self.api_workers))
        if name == "projections":
            return pixevo("projections", "run", *self.projections)
        if name == "dispatcher":
            return pixevo("dispatcher")
        if name == "simulator":
            port = str(self.settings.simulator_port)
            return pixevo("simulator", "--port", port, "--latency-scale", str(self.latency_scale))
        if name == "worker":
            argv = [sys.executable, "-m", "dramatiq", self.worker_module, "--skip-logging"]
            argv += ["--processes", str(self.worker_processes)]
            argv += ["--threads", str(self.worker_threads)]
            return argv + (["--queues", *self.worker_queues] if self.worker_queues else [])
        raise ValueError(f"unknown process {name!r}; known: {', '.join(PROCESSES)}")

    def environment(self, name: str) -> dict[str, str]:
        """The whole environment of the process ``name``."""
        env = self.settings.process_env(**self.extra_env)
        # PostgreSQL's pg_stat_activity then says which process holds each connection
        env.setdefault("PGAPPNAME", f"pixevo-{name}")
        env.setdefault("PIXEVO_SERVICE_NAME", f"pixevo-{name}")
        # every process's samples in one directory (wiped by fresh_metrics), summed by /metrics;
        # prometheus_client reads it at import, so it is set before the process starts
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(self.settings.metrics_path()))
        Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
        if name == "worker":
            if self.worker_timeout_ms is not None:
                env["dramatiq_worker_timeout"] = str(self.worker_timeout_ms)
            else:
                env.setdefault("dramatiq_worker_timeout", str(WORKER_POLL_MS))
        return env

    def start(self, name: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        """Starts ``name`` in a session of its own; output to ``log`` (default: ours)."""
        with ExitStack() as stack:
            out = stack.enter_context(log.open("wb")) if log is not None else None
            return subprocess.Popen(
                self.argv(name),
                env=self.environment(name),
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                start_new_session=True,
            )

    @contextmanager
    def running(
        self, names: Iterable[str], logs: Path, *, grace: float = GRACE_S
    ) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
        """Starts each of ``names`` (output to ``logs/<name>.log``); stops them all on exit."""
        processes: dict[str, subprocess.Popen[bytes]] = {}
        fresh_metrics(self.settings)
        try:
            for name in names:
                processes[name] = self.start(name, logs / f"{name}.log")
            yield processes
        finally:
            stop(processes.values(), grace)

    def exec(self, name: str) -> NoReturn:
        """Replaces this process by ``name`` (``pixevo worker`` becomes the Dramatiq worker)."""
        argv = self.argv(name)
        os.execve(argv[0], argv, self.environment(name))  # noqa: S606 - by design


def fresh_metrics(settings: Settings) -> None:
    """Empties the directory where the processes about to start keep their Prometheus samples
    (once, here: a process's own start must not delete its siblings' files)."""
    directory = settings.metrics_path()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def stop(processes: Iterable[subprocess.Popen[bytes]], grace: float = GRACE_S) -> None:
    """SIGTERM to each process, up to ``grace`` seconds for all to exit, then SIGKILL to each
    one's process group (what it forked and left behind too; each group is one we started)."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(max(0.1, deadline - time.monotonic()))
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait()
