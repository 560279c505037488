"""The API as a real process: structured JSON logs carry the request and user ids."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import Container
from tests.support.processes import child_env, free_port, running, wait_for

pytestmark = pytest.mark.e2e


def test_json_logs_bind_request_and_user(
    settings: Settings, container: Container, tmp_path: Path
) -> None:
    user = container.users.create("logs@example.com")
    port = free_port()
    env = child_env(settings, PIXEVO_HTTP_PORT=str(port), PIXEVO_LOG_FORMAT="json")
    log = tmp_path / "api.log"
    with running([sys.executable, "-m", "interfaces.cli", "api"], env, log):
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/health").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(healthy, timeout=30), log.read_text()
        response = httpx.get(
            f"{base}/v1/me",
            headers={"Authorization": f"Bearer {user.api_key}", "X-Request-ID": "req-42"},
        )
        assert response.status_code == 200
        assert response.headers["x-request-id"] == "req-42"
        assert wait_for(lambda: "req-42" in log.read_text(), timeout=10)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    [request] = [line for line in lines if line.get("request_id") == "req-42"]
    assert request["event"] == "http.request"
    assert request["user_id"] == str(user.user_id)
    assert request["status"] == 200
    assert request["path"] == "/v1/me"
    assert "timestamp" in request
    assert request["level"] == "info"
