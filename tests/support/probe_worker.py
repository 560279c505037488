"""``dramatiq tests.support.probe_worker``: the platform's worker plus the probe reaction."""

from __future__ import annotations

from interfaces.bootstrap import worker_container
from tests.support.probe import APPLICATIONS, REACTIONS

container = worker_container(REACTIONS, applications=APPLICATIONS)
broker = container.broker
