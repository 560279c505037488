"""Entry points: the HTTP API, the ``pixevo`` command, worker processes; and the composition root."""
