"""Schemathesis over the whole OpenAPI document of a real API process, as a user and as an
admin: no 5xx, every answer as documented (status, content type, body schema, headers), bad
input refused, and a create's links followed to its reads. Examples per operation are bounded
so the run stays short; the seed makes a failure reproducible."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from tests.support.processes import child_env, free_port, running, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: The Server-Sent Events feeds answer a stream that stays open: nothing a fuzzer can judge.
#: Their refusals (bad ``Last-Event-ID``, tokens) have tests in ``test_live.py``.
STREAMS = r"/events$"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
#: ``positive_data_acceptance`` expects every schema-valid body to succeed, but a valid shape can
#: still name a model the catalogue lacks (422) or cost more than the user has (402).
#: ``negative_data_rejection`` expects a body of the wrong JSON type to be refused, but Litestar
#: decodes bodies and parameters leniently (``strict=False``: ``0`` is taken as ``false``, ``"5"``
#: as ``5``); every constraint on a value (length, pattern, range, enum) is enforced as documented.
EXCLUDED_CHECKS = "positive_data_acceptance,negative_data_rejection"


def fuzz(base: str, key: str, report: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        str(SCHEMATHESIS),
        "run",
        f"{base}/schema/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--exclude-checks",
        EXCLUDED_CHECKS,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        "10",
        "--seed",
        "20261201",
        "--workers",
        "1",
        "--exclude-path-regex",
        STREAMS,
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-dir",
        str(report),
        "--no-color",
    ]
    # run in the report's directory: the CLI keeps a .schemathesis folder where it runs
    report.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=420, check=False, cwd=report
    )


def test_schemathesis_finds_nothing_as_a_user_or_an_admin(
    settings: Settings, tmp_path: Path
) -> None:
    # a limit far above what the fuzzer sends: the 429 path has tests of its own
    settings = replace(settings, rate_limit_per_s=10_000, rate_limit_burst=10_000)
    container: Container = build(settings)
    try:
        admin = container.users.create("root@example.com", "1000", admin=True)
        user = container.users.create("ada@example.com", "1000")
        container.projection("ledger").catch_up()
    finally:
        container.close()
    port = free_port()
    env = child_env(settings, PIXEVO_HTTP_PORT=str(port), PIXEVO_LOG_LEVEL="WARNING")
    base = f"http://127.0.0.1:{port}"
    with running([sys.executable, "-m", "interfaces.cli", "api"], env, tmp_path / "api.log"):

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/health").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(healthy, timeout=30), (tmp_path / "api.log").read_text()
        for who, key in (("user", user.api_key), ("admin", admin.api_key)):
            run = fuzz(base, key, tmp_path / who)
            assert run.returncode == 0, f"as {who}:\n{run.stdout[-20000:]}\n{run.stderr[-3000:]}"
