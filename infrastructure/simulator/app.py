"""The simulator's HTTP routes: three providers' wire styles, files, and its own admin.

predictions (provider "replicate")  POST /replicate/v1/predictions, GET .../{id},
                                    POST .../{id}/cancel
queue       (provider "fal")        POST /fal/{model}, GET /fal/requests/{id}/status[/stream]
                                    (SSE with previews), GET /fal/requests/{id},
                                    PUT /fal/requests/{id}/cancel
images      (provider "openai")     POST /openai/v1/images/generations (base64, synchronous),
                                    POST /openai/v1/images/edits (image, mask: base64)
image inputs                        fetched at submission, as real providers take them: URLs in
                                    input.image / input.mask (predictions) or image_url /
                                    mask_url (queue); base64 in the body (images). Upscalers
                                    resize the image by the scale; edit models blend the
                                    prompt's picture into it (inside the mask, if given);
                                    background removers make what is near the colour of the
                                    image's border transparent.
files                               GET /files/{id}.{ext}, GET /files/{id}/preview/{n}
moderation                          POST /moderation/v1/classify (image bytes -> nsfw score);
                                    faults under the provider name "moderation"
admin                               POST /_sim/faults/{provider}, DELETE /_sim/faults,
                                    GET /_sim/stats, GET /_sim/jobs/{id} (when it was made,
                                    its latency, when it was polled: monotonic seconds)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pyvips
from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.response import ServerSentEvent, ServerSentEventMessage

from application.catalogue import Catalogue, ModelSpec, UnknownModel, default_catalogue
from infrastructure.simulator import render, video
from infrastructure.simulator.inputs import InputRefused, fetch_inputs
from infrastructure.simulator.state import Counters, Faults, Job, Simulator

_TERMINAL = ("succeeded", "failed", "canceled")


class ProviderError(Exception):
    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


def _error(_: Request[Any, Any, Any], exc: ProviderError) -> Response[Any]:
    return Response(exc.body, status_code=exc.status, headers=exc.headers)


def _sim(request: Request[Any, Any, Any]) -> Simulator:
    sim: Simulator = request.app.state.sim
    return sim


def _authorised(request: Request[Any, Any, Any]) -> None:
    if not request.headers.get("authorization", "").strip():
        raise ProviderError(401, {"detail": "missing credentials"})


def _guard(request: Request[Any, Any, Any], provider: str, *, submission: bool) -> Simulator:
    _authorised(request)
    sim = _sim(request)
    if submission:
        failure = sim.admit(provider)
        if failure:
            status, headers = failure
            raise ProviderError(status, {"detail": f"simulated {status}"}, headers)
    elif sim.poll_failure(provider):
        raise ProviderError(503, {"detail": "simulated outage"})
    return sim


def _model(sim: Simulator, key: str) -> ModelSpec:
    try:
        return sim.catalogue.get(key)
    except UnknownModel:
        raise ProviderError(404, {"detail": f"unknown model {key}"}) from None


def _job(sim: Simulator, job_id: str, provider: str) -> Job:
    job = sim.jobs.get(job_id)
    if job is None or job.provider != provider:
        raise ProviderError(404, {"detail": "not found"})
    return job


def _file_url(request: Request[Any, Any, Any], job: Job) -> str:
    ext = "mp4" if job.model.kind == "video" else "png"
    return str(request.base_url).rstrip("/") + f"/files/{job.id}.{ext}"


# -- predictions ---------------------------------------------------------------------------


def _prediction(request: Request[Any, Any, Any], job: Job) -> dict[str, Any]:
    status = job.status(time.monotonic())
    base = str(request.base_url).rstrip("/") + f"/replicate/v1/predictions/{job.id}"
    body: dict[str, Any] = {
        "id": job.id,
        "model": job.model.key,
        "status": status,
        "input": job.input,
        "output": None,
        "error": None,
        "urls": {"get": base, "cancel": f"{base}/cancel"},
    }
    if status == "succeeded":
        body["output"] = [_file_url(request, job)]
        body["metrics"] = {"predict_time": round(job.latency_s, 3)}
    elif status == "failed":
        body["error"] = "NSFW content detected. Try running it again, or try a different prompt."
    return body


@post("/replicate/v1/predictions", status_code=201)
async def create_prediction(request: Request[Any, Any, Any]) -> dict[str, Any]:
    sim = _guard(request, "replicate", submission=True)
    payload = await request.json()
    model = _model(sim, str(payload.get("model")))
    body = dict(payload.get("input") or {})
    inputs = await _inputs(model, body.get("image"), body.get("mask"))
    return _prediction(request, sim.submit("replicate", model, body, inputs))


@get("/replicate/v1/predictions/{job_id:str}")
async def get_prediction(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    sim = _guard(request, "replicate", submission=False)
    job = _job(sim, job_id, "replicate")
    sim.polled(job)
    return _prediction(request, job)


@post("/replicate/v1/predictions/{job_id:str}/cancel", status_code=200)
async def cancel_prediction(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    sim = _guard(request, "replicate", submission=False)
    job = _job(sim, job_id, "replicate")
    if job.status(time.monotonic()) not in _TERMINAL:
        sim.cancel(job)
    return _prediction(request, job)


# -- queue ---------------------------------------------------------------------------------


def _queue_status(sim: Simulator, job: Job) -> dict[str, Any]:
    now = time.monotonic()
    status = job.status(now)
    if status == "starting":
        ahead = sum(
            1
            for j in sim.jobs.values()
            if j.provider == "fal" and j.created < job.created and j.status(now) == "starting"
        )
        return {"status": "IN_QUEUE", "queue_position": ahead}
    if status == "processing":
        return {"status": "IN_PROGRESS", "progress": round(job.progress(now), 3)}
    if status == "canceled":
        return {"status": "CANCELLED"}
    if status == "failed":
        return {"status": "ERROR", "error": {"type": "content_policy_violation"}}
    return {"status": "COMPLETED"}


@post("/fal/{model_key:str}", status_code=200)
async def enqueue(request: Request[Any, Any, Any], model_key: str) -> dict[str, Any]:
    sim = _guard(request, "fal", submission=True)
    model, body = _model(sim, model_key), dict(await request.json())
    inputs = await _inputs(model, body.get("image_url"), body.get("mask_url"))
    job = sim.submit("fal", model, body, inputs)
    base = str(request.base_url).rstrip("/") + f"/fal/requests/{job.id}"
    return {
        "request_id": job.id,
        "status_url": f"{base}/status",
        "response_url": base,
        "cancel_url": f"{base}/cancel",
    }


@get("/fal/requests/{job_id:str}/status")
async def queue_status(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    sim = _guard(request, "fal", submission=False)
    job = _job(sim, job_id, "fal")
    sim.polled(job)
    return _queue_status(sim, job)


@get("/fal/requests/{job_id:str}/status/stream")
async def queue_stream(request: Request[Any, Any, Any], job_id: str) -> ServerSentEvent:
    sim = _guard(request, "fal", submission=False)
    job = _job(sim, job_id, "fal")
    sim.polled(job)
    base = str(request.base_url).rstrip("/")

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        previews = 0
        while True:
            status = _queue_status(sim, job)
            if status["status"] == "IN_PROGRESS" and job.model.capabilities.streaming:
                step = int(status["progress"] * 4)
                if step > previews:
                    previews = step
                    status["preview"] = {"url": f"{base}/files/{job.id}/preview/{step}"}
            yield ServerSentEventMessage(data=msgspec.json.encode(status).decode())
            if status["status"] in ("COMPLETED", "ERROR", "CANCELLED"):
                return
            await asyncio.sleep(min(0.25, max(0.02, job.latency_s / 20)))

    return ServerSentEvent(events())


@get("/fal/requests/{job_id:str}")
async def queue_result(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    sim = _guard(request, "fal", submission=False)
    job = _job(sim, job_id, "fal")
    status = _queue_status(sim, job)["status"]
    if status == "ERROR":
        raise ProviderError(
            422, {"detail": [{"type": "content_policy_violation", "msg": "content flagged"}]}
        )
    if status != "COMPLETED":
        raise ProviderError(400, {"detail": f"request is {status}"})
    key = "video" if job.model.kind == "video" else "images"
    item = {
        "url": _file_url(request, job),
        "width": job.width,
        "height": job.height,
        "content_type": "video/mp4" if key == "video" else "image/png",
    }
    return {key: item if key == "video" else [item], "seed": job.seed}


@put("/fal/requests/{job_id:str}/cancel")
async def queue_cancel(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    sim = _guard(request, "fal", submission=False)
    job = _job(sim, job_id, "fal")
    if job.status(time.monotonic()) in _TERMINAL:
        raise ProviderError(400, {"status": "ALREADY_COMPLETED"})
    sim.cancel(job)
    return {"status": "CANCELLATION_REQUESTED"}


# -- images (synchronous) ------------------------------------------------------------------


@post("/openai/v1/images/generations", status_code=200)
async def generate_images(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return await _images(request, edit=False)


@post("/openai/v1/images/edits", status_code=200)
async def edit_images(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return await _images(request, edit=True)


async def _images(request: Request[Any, Any, Any], *, edit: bool) -> dict[str, Any]:
    sim = _guard(request, "openai", submission=True)
    payload = dict(await request.json())
    width, _, height = str(payload.get("size", "1024x1024")).partition("x")
    payload.update(width=int(width), height=int(height))
    model = _model(sim, str(payload.get("model")))
    if edit != (model.kind == "edit"):
        raise ProviderError(400, {"error": {"message": f"{model.key} is not for this route"}})
    inputs = await _inputs(model, payload.pop("image", None), payload.pop("mask", None))
    job = sim.submit("openai", model, payload, inputs)
    faults = sim.faults_for("openai")
    await asyncio.sleep(faults.hang_s if job.hung else job.latency_s)
    if job.rejected:
        raise ProviderError(
            400,
            {
                "error": {
                    "code": "content_policy_violation",
                    "message": "Your request was rejected.",
                }
            },
        )
    image = await asyncio.to_thread(_render, job)
    return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(image).decode()}]}


# -- files ---------------------------------------------------------------------------------


def _render(job: Job) -> bytes:
    prompt = str(job.input.get("prompt", ""))
    if job.model.kind == "video":
        duration_s = int(job.input.get("duration_s") or 5)
        return video.mp4(prompt, job.seed, job.width, job.height, duration_s)
    if job.model.kind == "upscale" and job.source is not None:
        return render.upscale(job.source, int(job.input.get("scale") or 2))
    if job.model.kind == "edit" and job.source is not None:
        return render.edit(job.source, job.mask, prompt, job.seed, job.width, job.height)
    if job.model.kind == "remove_background" and job.source is not None:
        return render.remove_background(job.source)
    return render.render(prompt, job.seed, job.width, job.height)


async def _inputs(model: ModelSpec, image: Any, mask: Any) -> tuple[bytes | None, bytes | None]:
    try:
        return await fetch_inputs(model, image, mask)
    except InputRefused as refused:
        raise ProviderError(422, {"detail": str(refused)}) from None


@get("/files/{name:str}")
async def file(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    job = _job_any(_sim(request), name.rsplit(".", 1)[0])
    if job.status(time.monotonic()) != "succeeded":
        raise ProviderError(404, {"detail": "not ready"})
    data = await asyncio.to_thread(_render, job)
    media = "video/mp4" if job.model.kind == "video" else "image/png"
    return Response(data, media_type=media)


@get("/files/{job_id:str}/preview/{step:int}")
async def preview_file(request: Request[Any, Any, Any], job_id: str, step: int) -> Response[bytes]:
    job = _job_any(_sim(request), job_id)
    data = await asyncio.to_thread(
        render.preview, str(job.input.get("prompt", "")), job.seed, job.width, job.height, step / 4
    )
    return Response(data, media_type="image/jpeg")


def _job_any(sim: Simulator, job_id: str) -> Job:
    job = sim.jobs.get(job_id)
    if job is None:
        raise ProviderError(404, {"detail": "not found"})
    return job


# -- admin ---------------------------------------------------------------------------------


CLASSIFIER_VERSION = "sim-nsfw-2026.11"


@post("/moderation/v1/classify", status_code=200)
async def classify(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """A stand-in image classifier: a deterministic score in [0, 0.4) from the image's bytes,
    or the score set with ``POST /_sim/faults/moderation {"nsfw_score": x}``."""
    faults = _sim(request).faults.get("moderation", Faults())
    if faults.outage:
        raise ProviderError(503, {"detail": "classifier unavailable"})
    body = await request.body()
    try:
        image = pyvips.Image.new_from_buffer(body, "")
    except pyvips.Error:
        raise ProviderError(422, {"detail": "the body is not an image"}) from None
    if faults.nsfw_score is not None:
        score = faults.nsfw_score
    else:
        score = int.from_bytes(hashlib.sha256(body).digest()[:4], "big") / 2**32 * 0.4
    return {
        "nsfw": round(score, 4),
        "model": CLASSIFIER_VERSION,
        "width": image.width,
        "height": image.height,
    }


@post("/_sim/faults/{provider:str}", status_code=200)
async def set_faults(request: Request[Any, Any, Any], provider: str, data: Faults) -> Faults:
    _sim(request).faults[provider] = data
    return data


@delete("/_sim/faults", status_code=204)
async def clear_faults(request: Request[Any, Any, Any]) -> None:
    _sim(request).faults.clear()


@get("/_sim/stats")
async def stats(request: Request[Any, Any, Any]) -> dict[str, Counters]:
    return dict(_sim(request).counters)


@get("/_sim/jobs/{job_id:str}")
async def job_record(request: Request[Any, Any, Any], job_id: str) -> dict[str, Any]:
    """A job as the simulator saw it; times in seconds on its monotonic clock (the host's
    ``CLOCK_MONOTONIC``: comparable with ``time.monotonic()`` of other processes on the host)."""
    job = _job_any(_sim(request), job_id)
    return {
        "id": job.id,
        "provider": job.provider,
        "model": job.model.key,
        "created": job.created,
        "latency_s": job.latency_s,
        "polled_at": list(job.polled_at),
    }


def create_simulator(catalogue: Catalogue | None = None, latency_scale: float = 1.0) -> Litestar:
    app = Litestar(
        route_handlers=[
            classify,
            create_prediction,
            get_prediction,
            cancel_prediction,
            enqueue,
            queue_status,
            queue_stream,
            queue_result,
            queue_cancel,
            generate_images,
            edit_images,
            file,
            preview_file,
            set_faults,
            clear_faults,
            stats,
            job_record,
        ],
        exception_handlers={ProviderError: _error},
        logging_config=None,
        openapi_config=None,
    )
    app.state.sim = Simulator(catalogue or default_catalogue(), latency_scale)
    return app
