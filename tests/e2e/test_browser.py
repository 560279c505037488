"""A real browser (headless Chromium through Selenium) against the platform's processes: the
SSE feed through ``EventSource`` with a stream token and the WebSocket, from a page of the API's
own origin and from a front end on another origin listed in ``PIXEVO_CORS_ORIGINS``; a page
from an origin not listed is refused by the browser itself.

The browser comes from Debian's ``chromium`` and ``chromium-driver`` (``scripts/install dev``
installs them where it can); only where they are missing is the test skipped, saying so.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, build
from tests.support.platform import platform_processes, with_simulator
from tests.support.processes import free_port, start_api, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "Debian's chromium and chromium-driver are not installed (scripts/install dev installs "
        "them as root with apt-get)",
        allow_module_level=True,
    )

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
BODY = {"model": "sim-instant", "prompt": "a lighthouse", "params": {"width": 64, "height": 64}}

#: In the page: a stream token, the WebSocket open, a create by fetch (with the key), then the
#: generation's SSE feed until its final event, and the socket's messages until ``completed``.
FEEDS_JS = """
const [api, key, body, done] = arguments;
const auth = {Authorization: 'Bearer ' + key};
const within = (ms, what) => new Promise((_, no) => setTimeout(() => no(new Error(what)), ms));
(async () => {
  const token = (await (await fetch(api + '/v1/stream-tokens', {method: 'POST', headers: auth}))
    .json()).token;
  const socket = new WebSocket(api.replace('http', 'ws') + '/v1/ws?token=' + token);
  await Promise.race([new Promise((yes, no) => { socket.onopen = yes; socket.onerror = no; }),
                      within(10000, 'socket not open')]);
  const seen = [];
  const socketDone = new Promise(yes => socket.onmessage = e => {
    const m = JSON.parse(e.data); seen.push(m.type); if (m.type === 'completed') yes();
  });
  const made = await fetch(api + '/v1/generations', {method: 'POST', body: JSON.stringify(body),
    headers: {...auth, 'Content-Type': 'application/json', 'Idempotency-Key': 'k' + Date.now()}});
  const generation = await made.json();
  const events = [];
  await Promise.race([new Promise(yes => {
    const path = '/v1/generations/' + generation.id + '/events?token=' + token;
    const feed = new EventSource(api + path);
    for (const type of ['status', 'progress', 'completed', 'derivatives', 'failed'])
      feed.addEventListener(type, e => {
        events.push(type);
        if (type === 'derivatives' || type === 'failed') { feed.close(); yes(); }
      });
  }), within(30000, 'no derivatives after the final event')]);
  await Promise.race([socketDone, within(30000, 'no completed message')]);
  socket.close();
  done({status: made.status, remaining: made.headers.get('RateLimit-Remaining'),
        events, socket: seen});
})().catch(e => done({error: String(e)}));
"""

#: In a page of an origin that is not allowed: the fetch and the socket must both fail.
REFUSED_JS = """
const [api, key, token, done] = arguments;
const result = {};
const socket = new WebSocket(api.replace('http', 'ws') + '/v1/ws?token=' + token);
socket.onopen = () => { result.socket = 'open'; socket.close(); };
socket.onclose = () => { result.socket = result.socket || 'refused'; finish(); };
fetch(api + '/v1/me', {headers: {Authorization: 'Bearer ' + key}})
  .then(r => { result.fetch = r.status; }, e => { result.fetch = 'refused: ' + e; })
  .then(finish);
function finish() { if ('socket' in result && 'fetch' in result) done(result); }
"""


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>a front end</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def page_server() -> Iterator[str]:
    """A local web server of a front end: an origin of its own."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    # an explicit driver: Selenium Manager would try the network
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def test_feeds_and_calls_from_a_browser_same_origin_and_cross_origin(
    settings: Settings, simulator: str, tmp_path: Path, stack: ExitStack
) -> None:
    front_end = stack.enter_context(page_server())
    stranger = stack.enter_context(page_server())
    settings = replace(with_simulator(settings, simulator), cors_origins=(front_end,))
    container: Container = build(settings)
    stack.callback(container.close)
    key = container.users.create("ada@example.com", "10").api_key
    stack.enter_context(platform_processes(settings, tmp_path))
    api = start_api(stack, settings, tmp_path / "api.log")
    auth = {"Authorization": f"Bearer {key}"}
    assert wait_for(  # the ledger projection has the credits (the 402 pre-check reads it)
        lambda: httpx.get(f"{api}/v1/credits", headers=auth).json()["available"] != "0.0000"
    )
    token = httpx.post(f"{api}/v1/stream-tokens", headers=auth).json()["token"]
    driver = stack.enter_context(browser())

    for origin in (api, front_end):  # a page of the API's own origin, then the front end's
        driver.get(f"{origin}/health" if origin == api else origin)
        got = driver.execute_async_script(FEEDS_JS, api, key, BODY)
        assert "error" not in got, (origin, got)
        assert got["status"] == 202 and got["remaining"] is not None, (origin, got)
        assert got["events"][-2:] == ["completed", "derivatives"], (origin, got)
        assert "completed" in got["socket"], (origin, got)

    driver.get(stranger)
    refused = driver.execute_async_script(REFUSED_JS, api, key, token)
    assert refused["socket"] == "refused", refused
    assert str(refused["fetch"]).startswith("refused"), refused
