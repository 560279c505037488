"""``GET /metrics`` of a real API process: every process's counters summed, the shared state's
gauges read at scrape time, in the Prometheus text format, with no id among the labels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from infrastructure.settings import Settings
from interfaces.bootstrap import Container
from tests.support.platform import whole_platform
from tests.support.processes import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: What an id looks like in a label value (a UUID, or a long run of hex digits).
ID_LIKE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-|[0-9a-f]{16,}", re.IGNORECASE)


def scrape(base: str) -> list[Sample]:
    response = httpx.get(f"{base}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_counters_rise_after_a_generation_and_no_label_is_an_id(
    settings: Settings, container: Container, simulator: str, tmp_path: Path
) -> None:
    user = container.users.create("metered@example.com", "10")
    headers = {"Authorization": f"Bearer {user.api_key}"}
    with whole_platform(settings, simulator, tmp_path) as base:
        before = scrape(base)
        made = httpx.post(
            f"{base}/v1/generations",
            json={"model": "sim-instant", "prompt": "a red kite", "params": {"seed": 9}},
            headers=headers,
        )
        assert made.status_code == 202, made.text
        generation_id = made.json()["id"]

        def counted() -> bool:
            now = scrape(base)
            return value(
                now, "pixevo_generations_total", model="sim-instant", status="completed"
            ) > value(before, "pixevo_generations_total", model="sim-instant", status="completed")

        assert wait_for(counted, timeout=60, interval=0.5)
        httpx.get(f"{base}/v1/generations/{generation_id}", headers=headers)
        after = scrape(base)

    # counted by the worker's processes, summed by the API's
    for name, labels in [
        ("pixevo_provider_calls_total", {"provider": "replicate", "outcome": "ok"}),
        ("pixevo_reactions_total", {"reaction": "generate", "outcome": "done"}),
        ("pixevo_reactions_total", {"reaction": "settle_generation", "outcome": "done"}),
        ("pixevo_provider_call_duration_seconds_count", {"operation": "submit"}),
        ("pixevo_reaction_duration_seconds_count", {"reaction": "process_result"}),
    ]:
        assert value(after, name, **labels) > value(before, name, **labels), (name, labels)
    # the API's own requests, by route template and status
    posted = {"method": "POST", "path": "/v1/generations", "status_code": "202"}
    assert value(after, "pixevo_http_requests_total", **posted) >= 1
    read = {"path": "/v1/generations/{generation_id}", "status_code": "200"}
    assert value(after, "pixevo_http_requests_total", **read) >= 1
    # the shared state at scrape time
    names = {s.name for s in after}
    assert {
        "pixevo_projection_lag_events",
        "pixevo_queue_messages",
        "pixevo_provider_breaker_state",
        "pixevo_generations_overdue",
    } <= names
    assert value(after, "pixevo_provider_breaker_state", provider="replicate", state="closed") == 1
    assert value(after, "pixevo_projection_lag_events", projection="generations") >= 0
    # bounded label sets: no id anywhere
    for sample in after:
        for label, text in sample.labels.items():
            assert not ID_LIKE.search(text), (sample.name, label, text)


def metric_names(expression: str) -> set[str]:
    """The ``pixevo_*`` series a PromQL expression reads (histogram suffixes dropped)."""
    names = set(re.findall(r"\bpixevo_[a-z_]+", expression))
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in names}


def test_the_alert_rules_and_the_dashboard_read_only_metrics_the_platform_serves(
    settings: Settings, container: Container, simulator: str, tmp_path: Path
) -> None:
    root = Path(__file__).resolve().parents[2] / "deploy"
    rules = yaml.safe_load((root / "prometheus" / "alerts.yml").read_text())
    alerted = {
        rule["alert"]: metric_names(rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    }
    assert {
        "PixevoProviderBreakerOpen",
        "PixevoProjectionLagging",
        "PixevoWebhookEndpointsFailing",
        "PixevoGenerationsStuck",
    } <= set(alerted)
    dashboard = json.loads((root / "grafana" / "pixevo-dashboard.json").read_text())
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in metric_names(target["expr"])
    }
    with whole_platform(settings, simulator, tmp_path) as base:
        served = {re.sub(r"_(bucket|count|sum|created)$", "", s.name) for s in scrape(base)}
    # what the processes count shows once counted (a generation, a 5xx, a webhook attempt):
    # declared by the platform's modules; the rest is read at every scrape
    read = set().union(*alerted.values()) | charted
    assert read - served - declared_metrics() == set()
    assert {"pixevo_provider_breaker_state", "pixevo_projection_lag_events"} <= served


def declared_metrics() -> set[str]:
    """Metrics declared by the platform's modules (a labelled one is served once counted)."""
    from infrastructure import metrics, webhooks  # noqa: F401, PLC0415 - declare theirs
    from interfaces.http.app import REQUEST_METRICS  # noqa: PLC0415
    from projections import generations  # noqa: F401, PLC0415 - declares its counter

    registered = REGISTRY._names_to_collectors
    names = {re.sub(r"_(bucket|count|sum|created)$", "", name) for name in registered}
    return names | {f"{REQUEST_METRICS.prefix}_requests_error_total"}
