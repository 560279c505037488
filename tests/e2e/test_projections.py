"""The ledger projection as a process: killed mid-batch, it resumes exactly once."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import Container
from tests.integration.test_projections import contents, fresh_build
from tests.support.processes import child_env, running, wait_for
from tests.support.seed import seed_ledger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_projection_killed_mid_batch_resumes_exactly_once(
    container: Container, settings: Settings, tmp_path: Path
) -> None:
    seed_ledger(container.billing, users=40, rounds=40)
    head = container.billing.recorder.max_notification_id() or 0
    live = container.projection("ledger")
    live.start()
    env = child_env(settings, PIXEVO_PROJECTION_BATCH="15", PIXEVO_LOG_LEVEL="WARNING")
    argv = [sys.executable, "-m", "interfaces.cli", "projections", "run", "ledger"]
    with running(argv, env, tmp_path / "projection.log") as process:
        assert wait_for(lambda: live.position() > head // 4, timeout=60)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    stopped_at = live.position()
    assert 0 < stopped_at < head, "the kill should land part-way through the log"

    live.catch_up()  # a restarted runner resumes from its own committed position
    assert live.position() == head
    projected = contents(container, "proj_ledger")
    assert projected == fresh_build(container, "proj_check")
    assert len(projected["ledger_entries"]) > head // 2
