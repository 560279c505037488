"""The synchronous images wire style: one call, base64 images in the answer."""

from __future__ import annotations

import base64
import binascii

from application.catalogue import ModelSpec
from application.normalise import Normalised
from application.providers import Output, ProgressSink, ProviderFailure, Submitted
from infrastructure.providers.http import HttpAdapter


class ImagesAdapter(HttpAdapter):
    def submit(self, model: ModelSpec, request: Normalised) -> Submitted:
        body = {
            "model": model.key,
            "prompt": request.prompt,
            "n": 1,
            "size": f"{request.params['width']}x{request.params['height']}",
            "response_format": "b64_json",
        }
        # an edit sends its image (and mask) in the body, base64
        body.update(self.input_data(request))
        path = "/v1/images/edits" if request.inputs else "/v1/images/generations"
        answer = self._call("POST", path, json=body, timeout=model.timeouts.total_s)
        try:
            data = base64.b64decode(answer["data"][0]["b64_json"], validate=True)
        except (KeyError, IndexError, TypeError, binascii.Error):
            raise ProviderFailure("provider_error", "no image in the answer") from None
        return Submitted(
            job_id=None,
            output=Output(
                url=None,
                data=data,
                width=int(request.params["width"]),
                height=int(request.params["height"]),
                content_type="image/png",
            ),
        )

    def wait(
        self,
        model: ModelSpec,  # noqa: ARG002
        job_id: str,  # noqa: ARG002
        on_progress: ProgressSink | None = None,  # noqa: ARG002
    ) -> Output:
        raise ProviderFailure("invalid_request", "a synchronous provider has no jobs to wait on")

    def cancel(self, model: ModelSpec, job_id: str) -> bool:  # noqa: ARG002
        """Nothing to cancel: the answer is the result (what it delivers stands)."""
        return False
