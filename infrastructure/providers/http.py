"""What every adapter shares: an httpx client and the mapping of HTTP failures to our kinds."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from application.catalogue import ModelSpec
from application.normalise import Normalised
from application.providers import Output, ProgressSink, ProviderFailure, Submitted
from infrastructure.providers.inputs import ProviderInputs

_CONTENT_MARKERS = ("content_policy", "nsfw", "safety", "flagged")


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def failure_for(response: httpx.Response) -> ProviderFailure:
    status, text = response.status_code, response.text[:500]
    if status == 429:
        return ProviderFailure("rate_limited", text, retry_after_s=retry_after(response))
    if status in (408, 504):
        return ProviderFailure("timeout", text)
    if status >= 500:
        return ProviderFailure("unavailable", f"HTTP {status}: {text}")
    if any(marker in text.lower() for marker in _CONTENT_MARKERS):
        return ProviderFailure("content_rejected", text)
    return ProviderFailure("invalid_request", f"HTTP {status}: {text}")


class HttpAdapter(ABC):
    """Base of the three adapters: one client per adapter, errors mapped in one place. Each
    adapter is a :class:`~application.providers.ProviderAdapter`; its wire style fills in the
    abstract methods."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        client: httpx.Client | None = None,
        auth_scheme: str = "Bearer",
        poll_interval_s: float = 0.25,
        inputs: ProviderInputs | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0))
        self.headers = {"Authorization": f"{auth_scheme} {api_key}"}
        self.poll_interval_s = poll_interval_s
        self.inputs = inputs

    def _input_access(self) -> ProviderInputs:
        if self.inputs is None:
            raise ProviderFailure("invalid_request", "this adapter cannot send image inputs")
        return self.inputs

    def input_links(self, request: Normalised) -> dict[str, str]:
        """Each image input (``image``, ``mask``) as a signed link the provider fetches."""
        return {name: self._input_access().url(item) for name, item in request.inputs.items()}

    def input_data(self, request: Normalised) -> dict[str, str]:
        """Each image input as base64, to send in the body."""
        return {name: self._input_access().base64(item) for name, item in request.inputs.items()}

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as error:
            raise ProviderFailure("timeout", str(error) or "timed out") from None
        except httpx.TransportError as error:
            raise ProviderFailure("unavailable", str(error) or type(error).__name__) from None

    def _call(self, method: str, path_or_url: str, *, timeout: float, **kwargs: Any) -> Any:
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        with self._mapped():
            response = self.client.request(
                method, url, headers=self.headers, timeout=timeout, **kwargs
            )
        if response.status_code >= 400:
            raise failure_for(response)
        return response.json() if response.content else None

    @abstractmethod
    def submit(self, model: ModelSpec, request: Normalised) -> Submitted: ...

    @abstractmethod
    def wait(
        self, model: ModelSpec, job_id: str, on_progress: ProgressSink | None = None
    ) -> Output: ...

    @abstractmethod
    def cancel(self, model: ModelSpec, job_id: str) -> bool: ...

    def fetch(self, output: Output) -> bytes:
        if output.data is not None:
            return output.data
        if output.url is None:
            raise ProviderFailure("provider_error", "the output has neither data nor a URL")
        with self._mapped():
            response = self.client.get(output.url, headers=self.headers, timeout=60)
        if response.status_code >= 400:
            raise failure_for(response)
        return response.content

    def _deadline(self, model: ModelSpec) -> float:
        return time.monotonic() + model.timeouts.total_s
