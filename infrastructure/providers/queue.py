"""The queue wire style: submit, follow the status stream (SSE, with previews), fetch."""

from __future__ import annotations

import json
import time

import httpx
from httpx_sse import SSEError, connect_sse

from application.catalogue import ModelSpec
from application.normalise import Normalised
from application.providers import (
    FailureKind,
    Output,
    Progress,
    ProgressSink,
    ProviderFailure,
    Submitted,
)
from infrastructure.providers.http import HttpAdapter, failure_for
from infrastructure.providers.predictions import provider_input


class QueueAdapter(HttpAdapter):
    def submit(self, model: ModelSpec, request: Normalised) -> Submitted:
        body = provider_input(request)
        for name, url in self.input_links(request).items():  # fal's style: image_url, mask_url
            del body[name]
            body[f"{name}_url"] = url
        queued = self._call("POST", f"/{model.key}", json=body, timeout=model.timeouts.submit_s)
        return Submitted(job_id=str(queued["request_id"]))

    def wait(
        self,
        model: ModelSpec,
        job_id: str,
        on_progress: ProgressSink | None = None,
    ) -> Output:
        deadline = self._deadline(model)
        url = f"{self.base_url}/requests/{job_id}/status/stream"
        timeout = httpx.Timeout(model.timeouts.submit_s, read=max(5.0, model.timeouts.total_s))
        with (
            self._mapped(),
            connect_sse(self.client, "GET", url, headers=self.headers, timeout=timeout) as source,
        ):
            if source.response.status_code >= 400:
                source.response.read()
                raise failure_for(source.response)
            try:
                for event in source.iter_sse():
                    if self._ended(event.data, on_progress):
                        break
                    if time.monotonic() > deadline:
                        raise ProviderFailure("timeout", "no result in time")
                else:
                    raise ProviderFailure("unavailable", "the status stream ended early")
            except SSEError as error:
                raise ProviderFailure("provider_error", str(error)) from None
        return self._result(model, job_id)

    @staticmethod
    def _ended(data: str, on_progress: ProgressSink | None) -> bool:
        status = json.loads(data)
        state = status.get("status")
        if state == "COMPLETED":
            return True
        if state == "ERROR":
            error = json.dumps(status.get("error"))
            kind: FailureKind = "content_rejected" if "content" in error else "provider_error"
            raise ProviderFailure(kind, error)
        if state == "CANCELLED":
            raise ProviderFailure("provider_error", "the request was cancelled")
        if state == "IN_PROGRESS" and on_progress is not None:
            preview = (status.get("preview") or {}).get("url")
            on_progress(
                Progress(percent=100.0 * float(status.get("progress", 0)), preview_url=preview)
            )
        return False

    def _result(self, model: ModelSpec, job_id: str) -> Output:
        result = self._call("GET", f"/requests/{job_id}", timeout=model.timeouts.submit_s)
        item = result.get("video") or (result.get("images") or [None])[0]
        if not item or "url" not in item:
            raise ProviderFailure("provider_error", "completed without an output")
        return Output(
            url=item["url"],
            data=None,
            width=int(item.get("width") or 0),
            height=int(item.get("height") or 0),
            content_type=str(item.get("content_type") or "image/png"),
        )

    def cancel(self, model: ModelSpec, job_id: str) -> bool:
        try:
            self._call("PUT", f"/requests/{job_id}/cancel", timeout=model.timeouts.submit_s)
        except ProviderFailure as failure:
            if failure.kind != "invalid_request":
                raise
            return False  # already finished: nothing to cancel
        return True
