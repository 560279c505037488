"""The moderation classifier over HTTP: ``POST {base}/v1/classify`` with the image's bytes,
answering ``{"nsfw": score, "model": version}``. The simulator serves one; production points
``PIXEVO_CLASSIFIER_URL`` at the real service."""

from __future__ import annotations

import httpx

from application.imaging import Classification, ClassifierUnavailable, ProcessingFailed


class HttpClassifier:
    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s)

    def classify(self, data: bytes, media_type: str) -> Classification:
        try:
            response = self._client.post(
                f"{self.base_url}/v1/classify", content=data, headers={"Content-Type": media_type}
            )
        except httpx.HTTPError as error:
            raise ClassifierUnavailable(f"the classifier did not answer: {error}") from None
        if response.status_code >= 500:
            raise ClassifierUnavailable(f"the classifier answered {response.status_code}")
        if response.status_code != 200:
            raise ProcessingFailed(f"the classifier refused the image: {response.text[:200]}")
        try:
            body = response.json()
            score, version = float(body["nsfw"]), str(body["model"])
        except (ValueError, KeyError, TypeError):
            raise ClassifierUnavailable("the classifier answered nonsense") from None
        if not 0 <= score <= 1:
            raise ClassifierUnavailable(f"the classifier's score {score} is not in [0, 1]")
        return Classification(nsfw_score=score, version=version)

    def close(self) -> None:
        self._client.close()
