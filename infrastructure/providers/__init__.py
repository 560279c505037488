"""Provider adapters: one per wire style, over httpx; one adapter instance per provider."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from application.catalogue import Catalogue, ModelSpec
from application.providers import ProviderAdapter
from infrastructure.metrics import MeteredAdapter
from infrastructure.providers.http import HttpAdapter
from infrastructure.providers.images import ImagesAdapter
from infrastructure.providers.inputs import ProviderInputs
from infrastructure.providers.predictions import PredictionsAdapter
from infrastructure.providers.queue import QueueAdapter

ADAPTERS: dict[str, type[HttpAdapter]] = {
    "predictions": PredictionsAdapter,
    "queue": QueueAdapter,
    "images": ImagesAdapter,
}
#: How each wire style authenticates ("Authorization: <scheme> <key>").
AUTH_SCHEMES = {"predictions": "Bearer", "queue": "Key", "images": "Bearer"}


class Providers:
    """The adapter of each provider in the catalogue, built on first use."""

    def __init__(
        self,
        catalogue: Catalogue,
        endpoint: Callable[[str], tuple[str, str]],
        client: httpx.Client | None = None,
        poll_interval_s: float = 0.25,
        inputs: ProviderInputs | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.inputs = inputs
        self.endpoint = endpoint
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(30.0, connect=5.0), limits=httpx.Limits(max_connections=64)
        )
        self.poll_interval_s = poll_interval_s
        self._adapters: dict[str, ProviderAdapter] = {}

    def for_model(self, model: ModelSpec) -> ProviderAdapter:
        adapter = self._adapters.get(model.provider)
        if adapter is None:
            url, key = self.endpoint(model.provider)
            speaks = ADAPTERS[model.wire](
                url,
                key,
                client=self.client,
                auth_scheme=AUTH_SCHEMES[model.wire],
                poll_interval_s=self.poll_interval_s,
                inputs=self.inputs,
            )
            # counted and timed per provider (see infrastructure.metrics)
            adapter = MeteredAdapter(speaks, model.provider)
            self._adapters[model.provider] = adapter
        return adapter

    def close(self) -> None:
        self.client.close()
