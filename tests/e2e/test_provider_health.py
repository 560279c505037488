"""Provider health end to end: an outage injected at the simulator opens a provider's breaker
and fails a generation; two separate API processes then answer ``GET /v1/admin/providers``
alike (projection and Redis, no process memory), and the health page, rendered by headless
Chromium with an admin's stream token, shows the open breaker, the error rate and the failed
generation's id.

The browser comes from Debian's ``chromium`` and ``chromium-driver``; only the browser test is
skipped where they are missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import build
from tests.support.platform import platform_processes, with_simulator
from tests.support.processes import start_api, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
#: How long a deferred generation waits for its provider before it fails.
DEFER_LIMIT_S = 4.0


@dataclass
class Platform:
    apis: list[str]  # two API processes
    admin: dict[str, str]
    user: dict[str, str]
    simulator: str


@pytest.fixture
def platform(settings: Settings, simulator: str, tmp_path: Path) -> Iterator[Platform]:
    settings = replace(with_simulator(settings, simulator), defer_limit_s=DEFER_LIMIT_S)
    container = build(settings)
    with ExitStack() as stack:
        stack.callback(container.close)
        admin = container.users.create("root@example.com", admin=True).api_key
        user = container.users.create("ada@example.com", "10").api_key
        stack.enter_context(platform_processes(settings, tmp_path))
        apis = [start_api(stack, settings, tmp_path / f"api-{n}.log") for n in (1, 2)]
        auth = {"Authorization": f"Bearer {user}"}

        def funded() -> bool:  # the ledger projection has the credits (the 402 pre-check)
            credits = httpx.get(f"{apis[0]}/v1/credits", headers=auth).json()
            return credits.get("available", "0.0000") != "0.0000"

        assert wait_for(funded)
        yield Platform(apis, {"Authorization": f"Bearer {admin}"}, auth, simulator)


def generate(platform: Platform, seed: int, **extra: Any) -> str:
    body = {"model": "flux-schnell", "prompt": "a lighthouse", "params": {"seed": seed}, **extra}
    made = httpx.post(f"{platform.apis[0]}/v1/generations", json=body, headers=platform.user)
    assert made.status_code == 202, made.text
    return str(made.json()["id"])


def generation(platform: Platform, generation_id: str) -> dict[str, Any]:
    got = httpx.get(f"{platform.apis[1]}/v1/generations/{generation_id}", headers=platform.user)
    return dict(got.json())


def providers_on(api: str, platform: Platform) -> dict[str, Any]:
    answer = httpx.get(f"{api}/v1/admin/providers", headers=platform.admin)
    assert answer.status_code == 200, answer.text
    return {p["provider"]: p for p in answer.json()["providers"]}


def shows_the_outage(replicate: dict[str, Any], failed_id: str) -> bool:
    return (
        replicate["breaker"]["state"] == "open"
        and replicate["last_5m"]["failed"] >= 1
        and (replicate["last_error"] or {}).get("generation_id") == failed_id
    )


def outage(platform: Platform) -> str:
    """One generation completes on replicate; then replicate is down and a generation that may
    not fall back meets it: its retries open the breaker, it is deferred, and it fails. Answers
    the failing generation's id, as soon as it was deferred (its breaker is open)."""
    ok = generate(platform, seed=1)
    assert wait_for(lambda: generation(platform, ok)["status"] == "completed", timeout=60)
    httpx.post(f"{platform.simulator}/_sim/faults/replicate", json={"outage": True})
    return generate(platform, seed=2, allow_fallback=False)


def test_after_injected_failures_every_api_process_shows_the_error_rate_and_the_open_breaker(
    platform: Platform,
) -> None:
    failing = outage(platform)
    seen: list[dict[str, Any]] = []

    def both_show_it() -> bool:  # read from both API processes, one after the other
        seen[:] = [providers_on(api, platform) for api in platform.apis]
        return all(shows_the_outage(found["replicate"], failing) for found in seen)

    assert wait_for(both_show_it, timeout=20, interval=0.2), [s["replicate"] for s in seen]
    first, second = seen
    # the same figures from either process (their windows end a few milliseconds apart)
    assert first == second
    replicate = first["replicate"]
    five = replicate["last_5m"]
    assert (five["calls"], five["succeeded"], five["failed"]) == (2, 1, 1)
    assert replicate["last_5m"]["success_rate"] == 0.5
    assert replicate["last_5m"]["p50_ms"] is not None  # the call that produced
    assert replicate["breaker"]["failures"] >= 3  # flux-schnell's three attempts
    assert replicate["last_error"]["kind"] == "unavailable"
    models = {m["model"]: m for m in replicate["models"]}
    assert models["flux-schnell"]["last_5m"]["failed"] == 1
    assert models["flux-schnell"]["last_error"]["generation_id"] == failing
    assert models["flux-dev"]["last_5m"]["calls"] == 0  # a catalogue model without calls
    assert first["fal"]["breaker"]["state"] == "closed" and first["fal"]["last_error"] is None

    # the generation whose call failed really failed (it waited for the provider, then gave up)
    assert wait_for(lambda: generation(platform, failing)["status"] == "failed", timeout=30)
    assert generation(platform, failing)["error"]["code"] == "provider_unavailable"
    # ... and a non-admin is refused
    refused = httpx.get(f"{platform.apis[1]}/v1/admin/providers", headers=platform.user)
    assert refused.status_code == 403 and refused.json()["status"] == 403


@contextmanager
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.options import Options  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    # an explicit driver: Selenium Manager would try the network
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_health_page_rendered_in_headless_chromium_shows_the_injected_failure(
    platform: Platform,
) -> None:
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    with browser() as driver:  # started first: the breaker stays open only seconds
        failing = outage(platform)
        api = platform.apis[1]
        assert wait_for(
            lambda: shows_the_outage(providers_on(api, platform)["replicate"], failing), timeout=20
        )
        token = httpx.post(f"{api}/v1/stream-tokens", headers=platform.admin).json()["token"]
        driver.get(f"{api}/v1/admin/providers/page?token={token}")

        section = driver.find_element(By.ID, "provider-replicate")
        badge = section.find_element(By.CSS_SELECTOR, "[data-breaker]")
        assert badge.get_attribute("data-breaker") == "open", driver.page_source
        assert "open" in badge.text
        overall = section.find_element(By.CSS_SELECTOR, 'tr[data-model=""]')
        assert overall.find_element(By.CLASS_NAME, "failed-5m").text == "1"
        assert overall.find_element(By.CLASS_NAME, "success-5m").text == "50.0 %"
        schnell = section.find_element(By.CSS_SELECTOR, 'tr[data-model="flux-schnell"]')
        assert "unavailable" in schnell.find_element(By.CLASS_NAME, "error").text
        ids = [e.text for e in section.find_elements(By.CSS_SELECTOR, "code.generation-id")]
        assert ids == [failing]  # the failed call's generation, in the recent errors
        assert section.find_elements(By.CSS_SELECTOR, "svg polyline")  # the sparklines
        fal = driver.find_element(By.ID, "provider-fal")  # a provider without trouble
        closed = fal.find_element(By.CSS_SELECTOR, "[data-breaker]")
        assert closed.get_attribute("data-breaker") == "closed"

        # a non-admin's token opens nothing
        mine = httpx.post(f"{api}/v1/stream-tokens", headers=platform.user).json()["token"]
        driver.get(f"{api}/v1/admin/providers/page?token={mine}")
        assert "403" in driver.page_source and "admin" in driver.page_source
