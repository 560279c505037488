"""Webhooks without I/O: signing as the reference library verifies it, the destination checks,
the retry schedule, the endpoint's use cases, and one attempt over a fake transport."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from application.errors import InvalidRequest
from application.webhooks import (
    EndpointNotFound,
    WebhooksApplication,
    address_refusal,
    check_destination,
    make_secret,
)
from infrastructure.settings import WEBHOOK_RETRY_SCHEDULE, Settings, SettingsError
from infrastructure.webhooks import WebhookSender, body_of, sign


def public(_: str, __: int) -> Sequence[str]:
    return ["93.184.215.14"]


def fixed(*addresses: str) -> Any:
    return lambda _host, _port: list(addresses)


# -- signing ---------------------------------------------------------------------------------


def test_a_signature_verifies_with_the_reference_library() -> None:
    secret = make_secret()
    assert secret.startswith("whsec_")
    body = body_of("generation.completed", datetime.now(UTC), {"id": "g1", "status": "completed"})
    now = int(datetime.now(UTC).timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, "msg_1", now, body),
    }
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "generation.completed"
    assert payload["data"]["id"] == "g1"
    # a tampered body or another secret fails
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"g1", b"g2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(make_secret()).verify(body, headers)


def test_the_library_signs_the_same_bytes() -> None:
    secret = make_secret()
    at = datetime.now(UTC).replace(microsecond=0)
    body = b'{"type":"x"}'
    ours = sign(secret, "msg_2", int(at.timestamp()), body)
    assert ours == Webhook(secret).sign(msg_id="msg_2", timestamp=at, data=body.decode())


# -- destinations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    why = address_refusal(address)
    assert why is not None
    assert kind in why


def test_public_addresses_are_allowed_and_private_ones_when_the_operator_says() -> None:
    assert address_refusal("93.184.215.14") is None
    assert address_refusal("2606:4700::1111") is None
    assert address_refusal("127.0.0.1", allow_private=True) is None
    assert address_refusal("0.0.0.0", allow_private=True) is not None  # noqa: S104


@pytest.mark.parametrize(
    ("url", "resolve", "says"),
    [
        ("http://localhost/hook", fixed("127.0.0.1", "::1"), "loopback"),
        ("http://0.0.0.0/hook", public, "unspecified"),
        ("http://[::1]:8080/hook", public, "loopback"),
        ("http://169.254.169.254/latest", public, "link-local"),
        ("http://[::ffff:127.0.0.1]/", public, "loopback"),
        ("http://mixed.example/", fixed("93.184.215.14", "10.0.0.1"), "private"),
        ("ftp://example.com/hook", public, "http or https"),
        ("file:///etc/passwd", public, "http or https"),
        ("https://user:pw@example.com/hook", public, "user name or password"),
        ("https://example.com/" + "a" * 2000, public, "at most"),
        ("https://exa\x00mple.com/", public, "NUL"),
        ("https://nowhere.invalid/", fixed(), "does not resolve"),
        ("https:///nohost", public, "no host"),
    ],
)
def test_urls_that_are_not_public_http_endpoints_are_refused(
    url: str, resolve: Any, says: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_destination(url, resolve, allow_private=False)
    assert refused.value.field == "url"
    assert says in str(refused.value)


def test_a_public_https_url_is_accepted() -> None:
    parts, addresses = check_destination(
        "https://hooks.example.com:8443/in?x=1", public, allow_private=False
    )
    assert (parts.hostname, parts.port, addresses) == ("hooks.example.com", 8443, ["93.184.215.14"])


# -- the schedule ----------------------------------------------------------------------------


def test_the_default_schedule_retries_for_more_than_a_day() -> None:
    assert WEBHOOK_RETRY_SCHEDULE[0] == 0  # the first attempt at once
    assert sum(WEBHOOK_RETRY_SCHEDULE) >= 24 * 3600
    assert Settings.from_env({}).webhook_retry_schedule == WEBHOOK_RETRY_SCHEDULE
    short = Settings.from_env({"PIXEVO_WEBHOOK_RETRY_SCHEDULE": "0,0.5,1"})
    assert short.webhook_retry_schedule == (0, 0.5, 1)
    assert Settings.from_env(short.as_env()).webhook_retry_schedule == (0, 0.5, 1)
    for bad in ("", "x", "1,-1", "1,,2"):
        if bad:
            with pytest.raises(SettingsError, match="PIXEVO_WEBHOOK_RETRY_SCHEDULE"):
                Settings.from_env({"PIXEVO_WEBHOOK_RETRY_SCHEDULE": bad})


# -- the use cases ---------------------------------------------------------------------------


@pytest.fixture
def webhooks() -> WebhooksApplication:
    return WebhooksApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, resolve=public)


def test_an_endpoint_is_registered_read_disabled_enabled_and_deleted_by_its_owner(
    webhooks: WebhooksApplication,
) -> None:
    owner, other = uuid4(), uuid4()
    made = webhooks.register(owner, "https://hooks.example.com/in", ["generation.completed"])
    assert made["secret"].startswith("whsec_")
    assert made["status"] == "active"
    endpoint_id = made["id"]
    with pytest.raises(EndpointNotFound):
        webhooks.get(other, endpoint_id)
    with pytest.raises(EndpointNotFound):
        webhooks.delete(other, endpoint_id)
    assert webhooks.disable(endpoint_id, "failing since then: last status 500")
    assert not webhooks.disable(endpoint_id, "again")  # once
    seen = webhooks.get(owner, endpoint_id)
    assert seen["status"] == "disabled"
    assert seen["disabled_reason"] == "failing since then: last status 500"
    assert seen["disabled_at"] is not None
    assert webhooks.enable(owner, endpoint_id)["status"] == "active"
    webhooks.delete(owner, endpoint_id)
    with pytest.raises(EndpointNotFound):
        webhooks.get(owner, endpoint_id)


def test_event_types_are_checked(webhooks: WebhooksApplication) -> None:
    with pytest.raises(InvalidRequest, match="unknown event type"):
        webhooks.register(uuid4(), "https://hooks.example.com/in", ["generation.exploded"])
    with pytest.raises(InvalidRequest, match="at least one"):
        webhooks.register(uuid4(), "https://hooks.example.com/in", [])


def test_a_private_url_is_refused_unless_allowed() -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    strict = WebhooksApplication(env=env, resolve=fixed("127.0.0.1"))
    with pytest.raises(InvalidRequest, match="loopback"):
        strict.register(uuid4(), "http://localhost:9000/", ["install.created"])
    lax = WebhooksApplication(env=env, resolve=fixed("127.0.0.1"), allow_private=True)
    assert lax.register(uuid4(), "http://localhost:9000/", ["install.created"])["id"]


# -- one attempt -----------------------------------------------------------------------------


@dataclass
class FakeHead:
    endpoint_id: UUID
    url: str
    secret: str
    failing_since: datetime | None
    sequence: int
    message_id: str
    event_type: str
    occurred_at: datetime
    attempts: int
    payload: Any


def sender(handler: Any, resolve: Any, *, allow_private: bool = False) -> WebhookSender:
    return WebhookSender(
        "postgresql://unused",
        outbox=None,  # type: ignore[arg-type]  # attempts need no database
        channel="unused",
        disable=lambda _id, _why: True,
        schedule=WEBHOOK_RETRY_SCHEDULE,
        disable_after_s=60,
        allow_private=allow_private,
        resolve=resolve,
        transport=httpx.MockTransport(handler),
    )


def head(url: str, secret: str) -> FakeHead:
    return FakeHead(
        uuid4(), url, secret, None, 1, "msg_abc", "generation.completed", datetime.now(UTC), 0, {}
    )


def test_an_attempt_connects_to_the_checked_address_with_the_name_as_host() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    secret = make_secret()
    outcome = sender(handler, public).attempt(head("https://hooks.example.com/in?a=1", secret))
    assert outcome.delivered
    (request,) = seen
    assert str(request.url) == "https://93.184.215.14/in?a=1"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    verified = Webhook(secret).verify(request.content, dict(request.headers))
    assert verified["type"] == "generation.completed"
    assert json.loads(request.content)["data"] == {}


def test_a_redirect_is_a_failed_attempt_and_a_rebound_name_is_refused() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://93.184.215.14/elsewhere"})

    outcome = sender(handler, public).attempt(head("http://hooks.example.com/in", make_secret()))
    assert not outcome.delivered
    assert outcome.status_code == 302
    assert calls == ["http://93.184.215.14/in"]  # not followed

    rebound = sender(handler, fixed("127.0.0.1")).attempt(
        head("http://hooks.example.com/in", make_secret())
    )
    assert rebound.refused
    assert "loopback" in str(rebound.error)
    assert len(calls) == 1  # nothing was sent to it
