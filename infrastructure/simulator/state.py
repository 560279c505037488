"""The simulator's memory: jobs, faults and counters, per provider."""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from application.catalogue import Catalogue, ModelSpec


class Faults(msgspec.Struct, kw_only=True):
    """What a provider does wrong, set through ``POST /_sim/faults/{provider}``."""

    error_rate: float = 0.0  # share of submissions answered 500
    rate_limited: int = 0  # the next N submissions answer 429 ...
    retry_after_s: float = 1.0  # ... with this Retry-After
    hang: bool = False  # jobs never finish (sync calls hang up to hang_s)
    hang_s: float = 30.0
    outage: bool = False  # every call answers 503
    poll_errors: int = 0  # the next N calls about submitted jobs (status, stream) answer 503
    reject_content: str | None = None  # prompts containing this end content-rejected
    latency_scale: float | None = None  # multiplies the model's latency; 0 = instant
    latency_s: float | None = None  # every new job takes exactly this long (before any scale)
    nsfw_score: float | None = None  # the moderation classifier answers this for every image


@dataclass
class Job:
    id: str
    provider: str
    model: ModelSpec
    input: dict[str, Any]
    created: float
    latency_s: float
    seed: int
    cancelled: bool = False
    rejected: bool = False
    hung: bool = False
    #: The image inputs' bytes (an upscale's or an edit's image, an edit's mask).
    source: bytes | None = None
    mask: bytes | None = None
    #: When it was asked about (status calls), on the simulator's monotonic clock (recent ones).
    polled_at: list[float] = field(default_factory=list)

    @property
    def width(self) -> int:
        return int(self.input.get("width") or 1024)

    @property
    def height(self) -> int:
        return int(self.input.get("height") or 1024)

    def progress(self, now: float) -> float:
        if self.latency_s <= 0:
            return 1.0
        return min(1.0, max(0.0, (now - self.created) / self.latency_s))

    def status(self, now: float) -> str:
        """starting -> processing -> succeeded | failed | canceled (predictions vocabulary)."""
        if self.cancelled:
            return "canceled"
        done = self.progress(now)
        if self.hung:
            return "processing" if done > 0.1 else "starting"
        if done >= 1.0:
            return "failed" if self.rejected else "succeeded"
        return "processing" if done > 0.1 else "starting"


#: How many arrival times ``Counters`` keeps per list (the most recent).
ARRIVALS_KEPT = 1000


@dataclass
class Counters:
    submissions: int = 0
    by_model: dict[str, int] = field(default_factory=dict)
    cancels: int = 0
    rejected_429: int = 0
    errors: int = 0
    poll_errors: int = 0  # status calls answered 503 by the poll_errors fault
    #: When the recent accepted submissions and 429s arrived (seconds on the simulator's
    #: monotonic clock: only differences mean anything), so a test can see a client wait.
    submitted_at: list[float] = field(default_factory=list)
    rejected_429_at: list[float] = field(default_factory=list)


def _arrived(times: list[float]) -> None:
    times.append(time.monotonic())
    del times[:-ARRIVALS_KEPT]


class Simulator:
    def __init__(self, catalogue: Catalogue, latency_scale: float = 1.0) -> None:
        self.catalogue = catalogue
        self.latency_scale = latency_scale
        self.jobs: dict[str, Job] = {}
        self.faults: dict[str, Faults] = {}
        self.counters: dict[str, Counters] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(0)  # noqa: S311 - simulated failures, not security

    def faults_for(self, provider: str) -> Faults:
        return self.faults.get(provider) or Faults()

    def admit(self, provider: str) -> tuple[int, dict[str, str]] | None:
        """The failure a submission meets, as (HTTP status, headers), or ``None``."""
        with self._lock:
            faults = self.faults_for(provider)
            counters = self.counters.setdefault(provider, Counters())
            if faults.outage:
                counters.errors += 1
                return 503, {}
            if faults.rate_limited > 0:
                faults.rate_limited -= 1
                counters.rejected_429 += 1
                _arrived(counters.rejected_429_at)
                return 429, {"Retry-After": f"{faults.retry_after_s:g}"}
            if faults.error_rate and self._rng.random() < faults.error_rate:
                counters.errors += 1
                return 500, {}
        return None

    def poll_failure(self, provider: str) -> bool:
        """Whether this status call about a submitted job meets a (transient) 503."""
        with self._lock:
            faults = self.faults_for(provider)
            if faults.outage:
                return True
            if faults.poll_errors > 0:
                faults.poll_errors -= 1
                self.counters.setdefault(provider, Counters()).poll_errors += 1
                return True
        return False

    def submit(
        self,
        provider: str,
        model: ModelSpec,
        payload: dict[str, Any],
        inputs: tuple[bytes | None, bytes | None] = (None, None),
    ) -> Job:
        faults = self.faults_for(provider)
        scale = faults.latency_scale if faults.latency_scale is not None else self.latency_scale
        raw_seed = payload.get("seed")
        seed = int(raw_seed) if raw_seed is not None else 0
        job_id = uuid.uuid4().hex
        prompt = str(payload.get("prompt", ""))
        job = Job(
            id=job_id,
            provider=provider,
            model=model,
            input=payload,
            created=time.monotonic(),
            latency_s=(faults.latency_s or _latency(model, job_id)) * scale,
            seed=seed,
            rejected=bool(faults.reject_content and faults.reject_content in prompt),
            hung=faults.hang,
            source=inputs[0],
            mask=inputs[1],
        )
        with self._lock:
            counters = self.counters.setdefault(provider, Counters())
            counters.submissions += 1
            _arrived(counters.submitted_at)
            counters.by_model[model.key] = counters.by_model.get(model.key, 0) + 1
            self.jobs[job_id] = job
        return job

    def polled(self, job: Job) -> None:
        with self._lock:
            _arrived(job.polled_at)

    def cancel(self, job: Job) -> None:
        with self._lock:
            job.cancelled = True
            self.counters.setdefault(job.provider, Counters()).cancels += 1


def _latency(model: ModelSpec, job_id: str) -> float:
    """Seconds, drawn from a log-normal fitted to the model's p50 and p95."""
    p50, p95 = model.timing.p50_ms / 1000, model.timing.p95_ms / 1000
    sigma = max(0.01, math.log(max(p95, p50 * 1.01) / p50) / 1.645)
    rng = random.Random(job_id)  # noqa: S311
    return float(p50 * math.exp(rng.gauss(0, sigma)))
