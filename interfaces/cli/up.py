"""``pixevo up``: the whole platform in the foreground, on the embedded default or given URLs.

Starts (or attaches to) the embedded PostgreSQL and Redis when no URL is configured, migrates,
makes sure an admin user exists, then supervises one process each of: the HTTP API, the
projection runners, the dispatcher, a Dramatiq worker and the provider simulator, all given the
same concrete URLs, exactly as separate production processes would be (their command lines and
environment come from :mod:`interfaces.cli.launch`, as for the tests and the benchmarks). A
process that dies is restarted. Ctrl-C (or SIGTERM) stops them all cleanly, then the embedded
servers.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from application.users import EmailTaken
from infrastructure.migrations import migrate
from interfaces.bootstrap import PROJECTIONS, Container, build, load_settings
from interfaces.cli.launch import PROCESSES, Launcher, fresh_metrics
from interfaces.cli.launch import stop as stop_all

ADMIN_EMAIL = "admin@pixevo.local"


def ensure_admin(container: Container, data_dir: Path) -> str:
    """The admin's API key, kept in the data dir (mode 600) so later starts can show it again."""
    path = data_dir / "admin.json"
    if path.exists():
        saved = json.loads(path.read_text())
        user = container.users.store.find_by_email(ADMIN_EMAIL)
        if user is not None and str(user.id) == saved.get("user_id"):
            return str(saved["api_key"])
    try:
        created = container.users.create(ADMIN_EMAIL, admin=True)
        user_id, api_key = created.user_id, created.api_key
    except EmailTaken:
        existing = container.users.store.find_by_email(ADMIN_EMAIL)
        if existing is None:  # the email was taken a moment ago, then the user vanished
            raise
        user_id, api_key = existing.id, container.users.issue_key(existing.id)
    path.write_text(json.dumps({"user_id": str(user_id), "api_key": api_key}))
    path.chmod(0o600)
    return api_key


def _wait_healthy(url: str, children: dict[str, subprocess.Popen[bytes]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if children["api"].poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def run(_: argparse.Namespace) -> int:
    settings = load_settings()
    migrate(settings.urls()[0])
    container = build(settings, run_migrations=False)
    try:
        api_key = ensure_admin(container, settings.data_dir)
        for name in PROJECTIONS:
            container.projection(name).start()
    finally:
        container.close()

    launcher = Launcher(settings)
    fresh_metrics(settings)
    children = {name: launcher.start(name) for name in PROCESSES}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    url = f"http://{settings.http_host}:{settings.http_port}"
    if _wait_healthy(url, children, timeout=60):
        print(f"\nPixevo is up at {url}  (API docs: {url}/schema/swagger)", flush=True)
        print(f"admin API key: {api_key}", flush=True)
        print(f"data dir: {settings.data_dir}   (Ctrl-C stops everything)\n", flush=True)
    else:
        print("the API did not become healthy; see the log above", file=sys.stderr)
        stopping = True
    while not stopping:
        for name, child in list(children.items()):
            if child.poll() is not None and not stopping:
                print(f"{name} exited with {child.returncode}; restarting", file=sys.stderr)
                time.sleep(1)
                children[name] = launcher.start(name)
        time.sleep(0.2)
    stop_all(children.values())
    print("stopped", flush=True)
    return 0
