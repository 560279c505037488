"""Entry points (HTTP API, ``pixevo`` command, worker processes) and the composition root."""
