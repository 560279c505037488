"""The cost of tracing and metrics: GET /v1/credits and POST /v1/generations at 32 clients with
tracing on and spans exported by OTLP to a local collector stub, against tracing off, measured
interleaved in the same run.

What it measures
    One scratch database holding one user with 1,000,000 credits, its ledger projection caught
    up. Two API processes (``pixevo api [--workers N]``) run side by side on it, identical but
    for tracing:

    * "without": ``PIXEVO_TRACING=off`` (no tracer provider: the OpenTelemetry API is a no-op,
      no server span, no psycopg instrumentation, no ``traceparent`` on responses);
    * "with": tracing on (the default) and ``PIXEVO_OTLP_ENDPOINT`` pointed at a collector stub;
      ``PIXEVO_TRACE_FILE`` unset (the file exporter off).

    Prometheus metrics (the request middleware, the counters) are always on in both: what is
    compared is tracing, on top of metrics. The cost of the metrics themselves: run
    ``benchmarks.credits_http`` and ``benchmarks.generation_requests`` with
    ``PIXEVO_TRACING=off`` from this checkout and, alternately, from a worktree of the commit
    before either existed (``git worktree add ../base b7f257e --detach``, then from each
    directory ``PYTHONPATH=. .venv/bin/python -m benchmarks.credits_http ...``; the platform's
    processes run the code of the directory the benchmark runs from).

    The collector stub is a child process (``--collector-stub PORT``, so it does not share the
    load generator's GIL): a threaded HTTP server that answers ``POST /v1/traces`` with 200 and
    an empty ``application/x-protobuf`` body, after counting the request, its bytes and the spans
    it carries (by name). Its counts are printed at the end: they prove the spans were exported.
    Before the load, one GET /v1/credits and one POST /v1/generations are sent to each API; for
    the "with" one, the spans of those two requests' traces, as the stub received them, are
    listed (what tracing adds per request).

    The measurements are the two benchmarks' own load generators, imported:
    ``credits_http.load`` (``--clients`` tasks looping GET /v1/credits on keep-alive
    connections: requests/s, p50, p99) and ``generation_requests.post_load`` (the same looping
    POST /v1/generations with distinct prompts: accepted/s, p50, p99); each window is
    ``--warmup`` unmeasured seconds then ``--duration`` measured ones. In every repeat, for each
    endpoint, both configurations are measured back to back, the first one alternating between
    repeats (without, with | with, without | ...), so each with/without ratio compares two
    adjacent windows. The API that is not being measured is idle.

    Reported: medians per configuration (throughput, p50, p99, the cores the API and the load
    generator used, and the API's CPU milliseconds per request, the figure least moved by other
    load on the machine), and the ratios with/without of throughput and p99, both as the median
    of the per-repeat (adjacent) ratios, which decides the target, and as the ratio of the
    medians.

    ``--unexported`` adds a third API, tracing on with no exporter (spans made, then dropped),
    measured in the same rotation: its ratios to "without" say how much of the cost is making
    the spans and how much exporting them (informational, not the target's).

Command
    .venv/bin/python -m benchmarks.observability_overhead [--clients 32] [--duration 6]
        [--warmup 2] [--repeats 3] [--api-workers 1] [--unexported] [--sample-ratio 1]
        [--throughput-target 0.90] [--p99-target 1.10]

    The defaults take about 2 minutes (repeats x 2 endpoints x 2 configurations x
    (warm-up + duration), plus the start-up).

Target (issue 13)
    Tracing and metrics overhead <= 10 %: for both endpoints, throughput with/without >= 0.90
    and p99 with/without <= 1.10.

Output: a table of medians, the ratios with MET/NOT MET, the stub's counts, and
``benchmarks/results/observability_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from benchmarks import credits_http, generation_requests
from benchmarks._support import (
    ROOT,
    ApiProcess,
    Environment,
    argument_parser,
    bench_environment,
    child_env,
    free_port,
    median,
    redacted,
    run_async,
    seed_user,
    server_version,
    table,
    wait_until,
    write_result,
)
from infrastructure.settings import Settings
from interfaces.bootstrap import build

NAME = "observability_overhead"
WITHOUT, WITH, UNEXPORTED = "without", "with", "unexported"
HOW = {
    WITHOUT: "PIXEVO_TRACING=off",
    WITH: "PIXEVO_OTLP_ENDPOINT={stub}, PIXEVO_TRACE_SAMPLE_RATIO={ratio}",
    UNEXPORTED: "on, no exporter: spans made and dropped",
}
CREDITS, GENERATIONS = "GET /v1/credits", "POST /v1/generations"
#: the stub keeps the span names of this many traces (the first ones: the check requests')
KEPT_TRACES = 2_000


# -- the collector stub (a child process) ---------------------------------------------------------


class CollectorStub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), StubHandler)
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.spans = 0
        self.by_name: dict[str, int] = {}
        self.traces: dict[str, list[str]] = {}
        self.undecoded = 0

    def record(self, body: bytes) -> None:
        # imported here: the benchmark's own process never needs the protobuf classes
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: PLC0415
            ExportTraceServiceRequest,
        )

        names: list[tuple[str, str]] = []
        try:
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    names.extend((span.trace_id.hex(), span.name) for span in scope.spans)
            decoded = True
        except Exception:  # noqa: BLE001 - counted, the stub answers 200 regardless
            decoded = False
        with self.lock:
            self.requests += 1
            self.bytes += len(body)
            self.undecoded += 0 if decoded else 1
            self.spans += len(names)
            for trace_id, name in names:
                self.by_name[name] = self.by_name.get(name, 0) + 1
                kept = self.traces.get(trace_id)
                if kept is not None:
                    kept.append(name)
                elif len(self.traces) < KEPT_TRACES:
                    self.traces[trace_id] = [name]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "bytes": self.bytes,
                "spans": self.spans,
                "undecoded": self.undecoded,
                "by_name": dict(self.by_name),
            }


class StubHandler(BaseHTTPRequestHandler):
    server: CollectorStub
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") == "/v1/traces":
            self.server.record(body)
            self._answer(200, b"", "application/x-protobuf")
        else:
            self._answer(404, b"", "text/plain")

    def do_GET(self) -> None:
        if self.path == "/stats":
            self._answer(200, json.dumps(self.server.stats()).encode(), "application/json")
        elif self.path.startswith("/traces/"):
            with self.server.lock:
                names = list(self.server.traces.get(self.path.removeprefix("/traces/"), []))
            self._answer(200, json.dumps(names).encode(), "application/json")
        else:
            self._answer(404, b"", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_stub(port: int) -> int:
    with CollectorStub(port) as server:
        server.serve_forever()
    return 0


class StubProcess:
    """The collector stub in a child process; ``stats()`` reads its counts over HTTP."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = settings.data_dir / "collector-stub.log"
        self.env = child_env(settings)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StubProcess:
        command = [sys.executable, "-m", f"benchmarks.{NAME}", "--collector-stub", str(self.port)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the collector stub exited: {self.log.read_text()}")
            try:
                return httpx.get(f"{self.url}/stats", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=30.0)
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=5).json()
        return answer

    def trace(self, trace_id: str) -> list[str]:
        names: list[str] = httpx.get(f"{self.url}/traces/{trace_id}", timeout=5).json()
        return names


# -- the measurement --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured window: throughput (requests or accepted per second) and latencies."""

    per_s: float
    p50_ms: float
    p99_ms: float
    count: int
    errors: int
    api_cpu: float  # cores used by the measured API process(es)
    client_cpu: float  # cores used by this process (the load generator)


def measure_credits(args: argparse.Namespace, api: ApiProcess, api_key: str) -> Sample:
    window = run_async(
        credits_http.load(
            api.base_url,
            "/v1/credits",
            {"Authorization": f"Bearer {api_key}"},
            clients=args.clients,
            warmup=args.warmup,
            duration=args.duration,
            api=api,
            client_kind="raw",
        )
    )
    return Sample(
        window.requests_per_s,
        window.p50_ms,
        window.p99_ms,
        window.requests,
        window.errors,
        window.server_cpu,
        window.client_cpu,
    )


def measure_generations(
    args: argparse.Namespace, api: ApiProcess, api_key: str, run: str, first_seed: int
) -> Sample:
    window = run_async(
        generation_requests.post_load(
            api,
            api_key,
            run,
            clients=args.clients,
            warmup=args.warmup,
            duration=args.duration,
            first_seed=first_seed,
        )
    )
    return Sample(
        window.accepted_per_s,
        window.p50_ms,
        window.p99_ms,
        window.accepted,
        window.errors,
        window.api_cpu,
        window.client_cpu,
    )


def check_requests(api: ApiProcess, api_key: str, run: str, label: str) -> dict[str, str | None]:
    """One GET /v1/credits and one POST /v1/generations; their ``traceparent`` (or None)."""
    auth = {"Authorization": f"Bearer {api_key}"}
    body = {
        "model": generation_requests.MODEL,
        "prompt": f"bench {run} check {label}",
        "params": {"seed": 0},
    }
    with httpx.Client(base_url=api.base_url, headers=auth, timeout=10) as client:
        credits = client.get("/v1/credits")
        generation = client.post("/v1/generations", json=body)
    if credits.status_code != 200:
        raise RuntimeError(f"{label}: GET /v1/credits answered {credits.status_code}")
    if generation.status_code != 202:
        raise RuntimeError(
            f"{label}: POST /v1/generations answered {generation.status_code}: {generation.text}"
        )
    return {
        CREDITS: credits.headers.get("traceparent"),
        GENERATIONS: generation.headers.get("traceparent"),
    }


def spans_per_request(stub: StubProcess, traceparents: dict[str, str | None]) -> dict[str, Any]:
    """The span names of each check request's trace, once the stub has received them (the
    exporter sends a batch every 5 s)."""
    ids = {label: tp.split("-")[1] for label, tp in traceparents.items() if tp}
    found: dict[str, list[str]] = {}

    def received() -> bool:
        for label, trace_id in ids.items():
            found[label] = stub.trace(trace_id)
        return all(found.values())

    with suppress(TimeoutError):  # reported as found (possibly empty)
        wait_until(received, timeout=15.0, interval=0.5)
    return {label: sorted(names) for label, names in found.items()}


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argument_parser(NAME, __doc__)
    parser.add_argument("--clients", type=int, default=32, help="concurrent client tasks")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--api-workers", type=int, default=1, help="pixevo api --workers N")
    parser.add_argument(
        "--throughput-target", type=float, default=0.90, help="with/without throughput >= this"
    )
    parser.add_argument("--p99-target", type=float, default=1.10, help="with/without p99 <= this")
    parser.add_argument(
        "--unexported",
        action="store_true",
        help="also a third API, tracing on without an exporter (spans made, then dropped): "
        "separates the cost of making spans from the cost of exporting them",
    )
    parser.add_argument(
        "--sample-ratio",
        type=float,
        default=1.0,
        help="PIXEVO_TRACE_SAMPLE_RATIO of the API with tracing (default 1: every request)",
    )
    parser.add_argument("--collector-stub", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.collector_stub is None and (args.repeats < 1 or args.clients < 1):
        parser.error("--repeats and --clients must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.collector_stub is not None:
        return serve_stub(args.collector_stub)
    if Settings.from_env().trace_file is not None:
        # the child processes inherit this environment: the file exporter would be on
        raise SystemExit("unset PIXEVO_TRACE_FILE: this benchmark measures OTLP export only")
    run = uuid.uuid4().hex[:8]
    with bench_environment(NAME) as env, ExitStack() as stack:
        c = build(env.settings)
        try:
            created = seed_user(c, credits="1000000")
        finally:
            c.close()
        print(
            f"{NAME}: PostgreSQL {server_version(env.database_url)} at "
            f"{redacted(env.database_url)}; {os.cpu_count()} cores, load average "
            f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
        stub = stack.enter_context(StubProcess(env.settings))
        configs = {
            WITHOUT: replace(env.settings, tracing=False, otlp_endpoint=None),
            WITH: replace(
                env.settings,
                tracing=True,
                otlp_endpoint=stub.url,
                trace_sample_ratio=args.sample_ratio,
            ),
        }
        if args.unexported:
            configs[UNEXPORTED] = replace(env.settings, tracing=True, otlp_endpoint=None)
        apis: dict[str, ApiProcess] = {}
        for label, settings in configs.items():
            api = ApiProcess(_named(env, settings, label), free_port(), args.api_workers)
            apis[label] = stack.enter_context(api)
            print(
                f"API {label} tracing ({HOW[label].format(stub=stub.url, ratio=args.sample_ratio)})"
                f" on {api.base_url}: "
                f"healthy after "
                f"{api.wait_healthy():.1f} s"
            )
        # twice: the first request to a process does one-off work (the event store's tables)
        traceparents = {
            label: [check_requests(api, created.api_key, run, f"{label} {n}") for n in (1, 2)]
            for label, api in apis.items()
        }
        traced = [label for label, sent in traceparents.items() if all(sent[1].values())]
        if traced != [label for label in apis if label != WITHOUT]:
            raise RuntimeError(f"tracing is not as configured: traceparents {traceparents}")
        print("check requests answered 200/202; a traceparent only from the APIs with tracing")
        per_request = spans_per_request(stub, traceparents[WITH][1])
        for label, names in per_request.items():
            print(f"  spans of a second {label} (exported): {len(names)}: {', '.join(names)}")
        return measure(args, apis, stub, created.api_key, run, per_request)


def _named(env: Environment, settings: Settings, label: str) -> Environment:
    """``env`` with ``settings``, its API logging to its own file."""
    directory = env.data_dir / label
    directory.mkdir(exist_ok=True)
    return replace(env, settings=settings, data_dir=directory)


def measure(
    args: argparse.Namespace,
    apis: dict[str, ApiProcess],
    stub: StubProcess,
    api_key: str,
    run: str,
    per_request: dict[str, Any],
) -> int:
    seed = 0

    def generations(api: ApiProcess) -> Sample:
        nonlocal seed
        seed += 10_000_000
        return measure_generations(args, api, api_key, run, seed)

    endpoints: dict[str, Callable[[ApiProcess], Sample]] = {
        CREDITS: lambda api: measure_credits(args, api, api_key),
        GENERATIONS: generations,
    }
    labels = list(apis)
    samples: dict[str, dict[str, list[Sample]]] = {e: {k: [] for k in labels} for e in endpoints}
    stub_before = stub.stats()
    for repeat in range(args.repeats):
        # each configuration first in turn: without, with | with, without | ...
        shift = repeat % len(labels)
        order = labels[shift:] + labels[:shift]
        for endpoint, sample in endpoints.items():
            for label in order:
                window = sample(apis[label])
                apis[label].check()
                samples[endpoint][label].append(window)
                print(
                    f"  repeat {repeat + 1}/{args.repeats} {endpoint:<20} {label:<10} "
                    f"{window.per_s:7,.0f}/s  p50 {window.p50_ms:6.1f} ms  "
                    f"p99 {window.p99_ms:6.1f} ms  errors {window.errors}  "
                    f"cpu api {window.api_cpu:.2f} client {window.client_cpu:.2f}"
                )
    time.sleep(6.0)  # the exporter's last batch (it sends every 5 s)
    stub_after = stub.stats()

    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    verdicts: list[bool] = []
    summary: list[str] = []
    for endpoint, by_label in samples.items():
        results[endpoint] = {}
        for label in labels:
            windows = by_label[label]
            row = {
                "per_s_median": median([w.per_s for w in windows]),
                "p50_ms_median": median([w.p50_ms for w in windows]),
                "p99_ms_median": median([w.p99_ms for w in windows]),
                "errors_total": sum(w.errors for w in windows),
                "api_cpu_median": median([w.api_cpu for w in windows]),
                "client_cpu_median": median([w.client_cpu for w in windows]),
                "api_cpu_ms_per_request_median": median(
                    [w.api_cpu / w.per_s * 1000 for w in windows if w.per_s]
                ),
                "runs": [_as_dict(w) for w in windows],
            }
            results[endpoint][label] = row
            rows.append([endpoint, label, *list(row.values())[:-1]])
        for label in labels[1:]:
            ratio = ratios(by_label[WITHOUT], by_label[label])
            results[endpoint][f"{label}/without"] = ratio
            line = (
                f"{endpoint}: {label}/without throughput {ratio['throughput']:.3f} (per repeat "
                f"{', '.join(f'{r:.2f}' for r in ratio['throughputs'])}; of medians "
                f"{ratio['throughput_of_medians']:.3f}), p99 {ratio['p99']:.3f} (per repeat "
                f"{', '.join(f'{r:.2f}' for r in ratio['p99s'])}; of medians "
                f"{ratio['p99_of_medians']:.3f})"
            )
            if label == WITH:
                met = (
                    ratio["throughput"] >= args.throughput_target
                    and ratio["p99"] <= args.p99_target
                )
                verdicts.append(met)
                results[endpoint]["met"] = met
                line += (
                    f"; target throughput >= {args.throughput_target:.2f} and p99 <= "
                    f"{args.p99_target:.2f}: {'MET' if met else 'NOT MET'}"
                )
            else:
                line += " (not the target's: where the cost is)"
            summary.append(line)

    exported = {
        key: stub_after[key] - stub_before[key]
        for key in ("requests", "bytes", "spans", "undecoded")
    }
    by_name = {
        name: count - stub_before["by_name"].get(name, 0)
        for name, count in sorted(stub_after["by_name"].items(), key=lambda kv: -kv[1])
    }
    traced = sum(w.count for by_label in samples.values() for w in by_label[WITH])
    print()
    print(
        f"{args.clients} concurrent clients, medians of {args.repeats} repeats "
        f"({args.duration:g} s measured after {args.warmup:g} s warm-up per window), "
        f"pixevo api --workers {args.api_workers}; throughput = requests/s (GET) or "
        "accepted/s (POST)"
    )
    print(
        table(
            [
                *("endpoint", "tracing", "per s", "p50 ms", "p99 ms", "errors"),
                *("api cpu", "client cpu", "api cpu ms/req"),
            ],
            rows,
        )
    )
    print("ratios to without: median of the per-repeat ratios of adjacent windows (the target's)")
    for line in summary:
        print(line)
    all_met = all(verdicts)
    print(f"overall (tracing and metrics overhead <= 10 %): {'MET' if all_met else 'NOT MET'}")
    print(
        f"collector stub during the load: {exported['requests']:,} export requests, "
        f"{exported['bytes']:,} bytes, {exported['spans']:,} spans ({exported['undecoded']} "
        f"undecoded) for {traced:,} measured requests (plus the warm-ups') with tracing on"
    )
    print("  spans by name: " + ", ".join(f"{n} {c:,}" for n, c in by_name.items() if c))
    print(
        f"note: the load generator (this process), the APIs, the collector stub and PostgreSQL "
        f"share this machine's {os.cpu_count()} cores with whatever else runs on it; load "
        f"average now {', '.join(f'{x:.2f}' for x in os.getloadavg())}."
    )
    written = write_result(
        NAME,
        {
            "config": {
                "clients": args.clients,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "repeats": args.repeats,
                "api_workers": args.api_workers,
                "without": "PIXEVO_TRACING=off",
                "unexported": bool(args.unexported),
                "with": "tracing on, PIXEVO_OTLP_ENDPOINT = a local collector stub (child "
                "process answering 200 with an empty body), no trace file, "
                f"PIXEVO_TRACE_SAMPLE_RATIO={args.sample_ratio}",
                "load_generator": "credits_http.load (raw) and generation_requests.post_load, "
                "this process",
            },
            "target": {
                "throughput_ratio": args.throughput_target,
                "p99_ratio": args.p99_target,
                "met": all_met,
            },
            "results": results,
            "spans_per_request": per_request,
            "collector_stub": {**exported, "by_name": by_name},
            "load_average_end": os.getloadavg(),
        },
    )
    print(f"written {written}")
    return 0


def ratios(off: Sequence[Sample], on: Sequence[Sample]) -> dict[str, Any]:
    """``on`` over ``off``: per repeat (adjacent windows), their median, and of the medians."""
    throughputs = [b.per_s / a.per_s for a, b in zip(off, on, strict=True) if a.per_s]
    p99s = [b.p99_ms / a.p99_ms for a, b in zip(off, on, strict=True) if a.p99_ms]
    return {
        "throughput": median(throughputs),
        "throughputs": throughputs,
        "throughput_of_medians": median([w.per_s for w in on]) / median([w.per_s for w in off]),
        "p99": median(p99s),
        "p99s": p99s,
        "p99_of_medians": median([w.p99_ms for w in on]) / median([w.p99_ms for w in off]),
    }


def _as_dict(sample: Sample) -> dict[str, Any]:
    return {name: getattr(sample, name) for name in Sample.__slots__}


if __name__ == "__main__":
    raise SystemExit(main())
