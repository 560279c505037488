"""The Dramatiq worker entry point: ``dramatiq interfaces.worker`` (``pixevo worker`` runs it)."""

from __future__ import annotations

from interfaces.bootstrap import REACTIONS, worker_container

container = worker_container(REACTIONS)
broker = container.broker
