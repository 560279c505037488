"""``pixevo up`` on the embedded default, as a new user runs it: nothing configured."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.processes import ROOT, free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def embedded_env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXEVO_")}
    return {
        **env,
        "PIXEVO_DATA_DIR": str(data_dir),
        "PIXEVO_HTTP_PORT": str(port),
        "PIXEVO_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        "PIXEVO_SIMULATOR_PORT": str(free_port()),
    }


def test_up_runs_everything_embedded_and_stops_cleanly(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    env = embedded_env(data_dir, port)
    log = (tmp_path / "up.log").open("w+")
    up = subprocess.Popen(
        [sys.executable, "-m", "interfaces.cli", "up"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: "admin API key" in (tmp_path / "up.log").read_text(), 120), (
            tmp_path / "up.log"
        ).read_text()[-3000:]
        admin_key = json.loads((data_dir / "admin.json").read_text())["api_key"]
        assert admin_key in (tmp_path / "up.log").read_text()
        admin = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=base, timeout=10) as http:
            made = http.post(
                "/v1/admin/users", json={"email": "new@example.com", "credits": "3"}, headers=admin
            )
            assert made.status_code == 201, made.text
            user = {"Authorization": f"Bearer {made.json()['api_key']}"}
            # the projection runner, a separate process, catches up by itself
            assert wait_for(
                lambda: http.get("/v1/credits", headers=user).json()["balance"] == "3.0000",
                timeout=30,
            )
            assert http.get("/ready").status_code == 200

            # a second process on the same data dir shares the embedded servers
            other = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "interfaces.cli",
                    "users",
                    "create",
                    "--email",
                    "cli@example.com",
                    "--credits",
                    "1",
                ],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert other.returncode == 0, other.stderr
            cli_user = {"Authorization": f"Bearer {json.loads(other.stdout)['api_key']}"}
            assert http.get("/v1/me", headers=cli_user).json()["email"] == "cli@example.com"
        postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(60)
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert wait_for(lambda: not psutil.pid_exists(postmaster), timeout=15)
    children = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert children == []
