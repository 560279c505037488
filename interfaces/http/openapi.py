"""The OpenAPI document as the API behaves: refined once, where Litestar's generator falls short.

* Request bodies are described by msgspec's own JSON Schema of the structs that decode them,
  so every constraint the validation enforces (lengths, patterns, ranges, enums, the size of
  ``params``) is in the document exactly as it is enforced.
* Every error is RFC 9457 problem details (``application/problem+json``, the ``Problem``
  schema), under each status the operation can answer, not the framework's validation shape.
* Work-creating routes document their rate-limit headers and 429.
* A create links to the reads of what it made (OpenAPI ``links``), so a client, or a
  schema-driven fuzzer, can follow ``POST /v1/generations`` to ``GET /v1/generations/{id}``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from litestar.routes import HTTPRoute

from interfaces.http import dto
from interfaces.http.problems import TITLES, Problem
from interfaces.http.ratelimit import RATE_LIMIT_OPT

SIGNED = "/v1/files/{key}"
#: The structs that decode request bodies: their schemas come from msgspec.
REQUEST_BODIES: tuple[type[msgspec.Struct], ...] = (
    dto.CreateGeneration,
    dto.CreateUser,
    dto.Grant,
)
PUBLIC = ("/health", "/ready", "/metrics", SIGNED)  # a signed link needs no key
_IMAGES = ("image/png", "image/jpeg", "image/webp")
_RESULTS = (*_IMAGES, "image/avif", "video/mp4")
#: Routes whose body is a file, not JSON: (method, path) -> the media types they take.
FILE_BODIES = {("post", "/v1/uploads"): _IMAGES}
#: Routes that answer a file, not JSON: (method, path) -> the media types they answer.
FILE_RESPONSES = {
    ("get", "/v1/uploads/{upload_id}/content"): _IMAGES,
    ("get", SIGNED): _RESULTS,
    ("get", "/v1/generations/{generation_id}/assets/{kind}"): _RESULTS,
    ("get", "/v1/generations/{generation_id}/previews/{number}"): ("image/jpeg",),
}
#: Operations that charge (or hold) the caller's credits: 402 when they cannot pay.
PAYING = {
    ("post", "/v1/generations"),
    ("post", "/v1/workflows/{workflow_id}/runs"),
    ("post", "/v1/listings/{listing_id}/install"),
}
#: Server-Sent Events feeds (a stream for a finished generation answers 204: nothing to follow).
EVENT_STREAMS = {
    "/v1/events": False,
    "/v1/generations/{generation_id}/events": True,
    "/v1/workflow-runs/{run_id}/events": True,
}
#: (method, path) -> {link name: (target operation's method and path, its parameters)}.
LINKS: dict[tuple[str, str], dict[str, tuple[str, str, dict[str, str]]]] = {
    ("post", "/v1/generations"): {
        "GetGeneration": ("get", "/v1/generations/{generation_id}", {}),
        "CancelGeneration": ("post", "/v1/generations/{generation_id}/cancel", {}),
        "GenerationEvents": ("get", "/v1/generations/{generation_id}/events", {}),
    },
    ("post", "/v1/generations/{generation_id}/cancel"): {
        "GetGeneration": ("get", "/v1/generations/{generation_id}", {}),
    },
    ("post", "/v1/uploads"): {
        "GetUpload": ("get", "/v1/uploads/{upload_id}", {}),
        "UploadContent": ("get", "/v1/uploads/{upload_id}/content", {}),
    },
    ("post", "/v1/listings"): {
        "GetListing": ("get", "/v1/listings/{listing_id}", {}),
        "InstallListing": ("post", "/v1/listings/{listing_id}/install", {}),
    },
    ("post", "/v1/webhooks"): {
        "GetWebhook": ("get", "/v1/webhooks/{webhook_id}", {}),
        "WebhookDeliveries": ("get", "/v1/webhooks/{webhook_id}/deliveries", {}),
    },
}
_LINK_PARAMETERS = {
    "generation_id": "$response.body#/id",
    "upload_id": "$response.body#/id",
    "listing_id": "$response.body#/id",
    "webhook_id": "$response.body#/id",
}
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": "requests a user may make at once (the burst)",
    "RateLimit-Remaining": "requests that would be accepted now",
    "RateLimit-Reset": "seconds until the limit is whole again",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": TITLES.get(status, "Error"),
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": _header("seconds to wait before trying again")}
    return response


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "integer", "minimum": 0}}


def _statuses(method: str, path: str, limited: bool) -> set[int]:
    """The error statuses an operation can answer."""
    if path == SIGNED:
        return {400, 403, 404}
    if path in PUBLIC:
        return {503} if path == "/ready" else set()
    statuses = {400, 401, 404, 503}
    if method in ("post", "patch"):
        statuses |= {409, 413, 415, 422}
    if path.startswith("/v1/admin/"):
        statuses.add(403)
    if (method, path) in PAYING:
        statuses.add(402)
    if limited:
        statuses.add(429)
    return statuses


def _limited_operations(app: Litestar) -> set[tuple[str, str]]:
    limited = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = re.sub(r"{(\w+):[^}]+}", r"{\1}", route.path)
        for handler in route.route_handlers:
            if handler.opt.get(RATE_LIMIT_OPT):
                limited |= {(m.lower(), path) for m in handler.http_methods}
    return limited


def _links(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    links = {}
    for name, (target_method, target_path, extra) in LINKS.get((method, path), {}).items():
        target = doc["paths"].get(target_path, {}).get(target_method)
        if target is None:
            continue
        names = {p["name"] for p in target.get("parameters", []) if p["in"] == "path"}
        parameters = {n: v for n, v in _LINK_PARAMETERS.items() if n in names}
        links[name] = {"operationId": target["operationId"], "parameters": parameters | extra}
    return links


def _event_stream(responses: dict[str, Any], *, finished: bool) -> None:
    responses["200"] = {
        "description": "Server-Sent Events (resume with Last-Event-ID)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    if finished:
        responses["204"] = {"description": "finished: its final event was sent before"}


def refine(doc: dict[str, Any], app: Litestar) -> dict[str, Any]:
    """Refines Litestar's document in place (once: it is cached by the app)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    if "Problem" in schemas:
        return doc
    _, components = msgspec.json.schema_components(
        [*REQUEST_BODIES, Problem], ref_template="#/components/schemas/{name}"
    )
    schemas.update(components)
    limited = _limited_operations(app)
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if path in PUBLIC:
                operation["security"] = []
            if path in EVENT_STREAMS:
                _event_stream(responses, finished=EVENT_STREAMS[path])
            binary = {"schema": {"type": "string", "format": "binary"}}
            if (method, path) in FILE_BODIES:
                operation["requestBody"] = {
                    "required": True,
                    "content": dict.fromkeys(FILE_BODIES[method, path], binary),
                }
            if (method, path) in FILE_RESPONSES:
                responses["200"] = {
                    "description": "the file",
                    "content": dict.fromkeys(FILE_RESPONSES[method, path], binary),
                }
            is_limited = (method, path) in limited
            for status in sorted(_statuses(method, path, is_limited)):
                responses[str(status)] = _problem_response(status)
            for status, response in responses.items():
                if is_limited:
                    headers = response.setdefault("headers", {})
                    headers.update({n: _header(d) for n, d in RATE_LIMIT_HEADERS.items()})
                if status.startswith("2") and (links := _links(doc, method, path)):
                    response["links"] = links
    return doc


class RefinedJson(JsonRenderPlugin):
    def render(self, request: Any, openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, refine(openapi_schema, request.app))


class RefinedSwagger(SwaggerRenderPlugin):
    def render(self, request: Any, openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, refine(openapi_schema, request.app))
