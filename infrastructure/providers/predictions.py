"""The async predictions wire style: create, then get until it ends; cancel on request."""

from __future__ import annotations

import time
from typing import Any

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
from infrastructure.providers.http import HttpAdapter

_CONTENT = ("nsfw", "safety", "content")


def provider_input(request: Normalised) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": request.prompt,
        **request.params,
        "output_format": request.output_format,
    }
    if request.negative_prompt:
        body["negative_prompt"] = request.negative_prompt
    return body


class PredictionsAdapter(HttpAdapter):
    def submit(self, model: ModelSpec, request: Normalised) -> Submitted:
        # image inputs as URLs the provider fetches, in place of our references
        body = {"model": model.key, "input": provider_input(request) | self.input_links(request)}
        created = self._call("POST", "/v1/predictions", json=body, timeout=model.timeouts.submit_s)
        return Submitted(job_id=str(created["id"]))

    def wait(
        self,
        model: ModelSpec,
        job_id: str,
        on_progress: ProgressSink | None = None,
    ) -> Output:
        deadline = self._deadline(model)
        while True:
            prediction = self._call(
                "GET", f"/v1/predictions/{job_id}", timeout=model.timeouts.submit_s
            )
            status = prediction.get("status")
            if status == "succeeded":
                return self._output(model, prediction)
            if status == "failed":
                error = str(prediction.get("error") or "the prediction failed")
                kind: FailureKind = (
                    "content_rejected"
                    if any(c in error.lower() for c in _CONTENT)
                    else "provider_error"
                )
                raise ProviderFailure(kind, error)
            if status == "canceled":
                raise ProviderFailure("provider_error", "the prediction was canceled")
            if time.monotonic() > deadline:
                raise ProviderFailure("timeout", f"no result within {model.timeouts.total_s} s")
            if on_progress is not None and status == "processing":
                on_progress(Progress(percent=-1.0))  # the provider reports no percentage
            time.sleep(self.poll_interval_s)

    def cancel(self, model: ModelSpec, job_id: str) -> bool:
        prediction = self._call(
            "POST", f"/v1/predictions/{job_id}/cancel", timeout=model.timeouts.submit_s
        )
        status = (prediction or {}).get("status")
        return status not in ("succeeded", "failed")  # canceled, or being cancelled

    @staticmethod
    def _output(model: ModelSpec, prediction: dict[str, Any]) -> Output:
        output = prediction.get("output")
        url = output[0] if isinstance(output, list) and output else output
        if not isinstance(url, str):
            raise ProviderFailure("provider_error", "succeeded without an output")
        params = prediction.get("input") or {}
        video = model.kind == "video"
        return Output(
            url=url,
            data=None,
            width=int(params.get("width") or 0),
            height=int(params.get("height") or 0),
            content_type="video/mp4" if video else "image/png",
        )
