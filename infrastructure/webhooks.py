"""The webhook sender: delivers the outbox's messages (``proj_webhooks``), in the dispatcher.

A few threads each claim an endpoint whose oldest undelivered message is due (a row lock,
``FOR UPDATE SKIP LOCKED``, held for one attempt), so several dispatcher processes never send one
endpoint's messages at once or out of order, while different endpoints are sent concurrently.
One attempt per claim:

* the URL's host is resolved and every address checked (DNS may have changed since the endpoint
  was registered), then the request goes to the checked address (``Host`` and TLS SNI carry the
  name, so nothing resolves it again in between); redirects are not followed (a 3xx fails);
* signed per Standard Webhooks (``webhook-id``: the message's, stable across attempts and
  redeliveries; ``webhook-timestamp``; ``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256
  of ``{id}.{timestamp}.{body}`` keyed by the secret's base64 payload);
* a 2xx marks it ``delivered``; anything else ``failing`` with the next attempt due after the
  schedule's next delay (stored in PostgreSQL: the deadline survives every process), and
  ``failed`` once the schedule is spent, when the next message goes;
* an endpoint failing continuously for longer than the disable period is disabled through the
  webhooks application (its owner sees why, and may enable it again).

Threads wake on the outbox's ``NOTIFY`` or after ``poll_s``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import httpx
import prometheus_client
import psycopg
import structlog
from psycopg_pool import ConnectionPool

from application.errors import InvalidRequest
from application.webhooks import address_refusal, parse_url, port_of, resolve_with

log = structlog.get_logger(__name__)

WEBHOOK_DELIVERIES = prometheus_client.Counter(
    "pixevo_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"]
)
#: Disables an endpoint (through the application); ``False`` if it was not active.
Disable = Callable[[UUID, str], bool]
Resolve = Callable[[str, int], Sequence[str]]
USER_AGENT = "Pixevo-Webhooks/1"


class Head(Protocol):
    """An endpoint's oldest undelivered message, with what sending it needs."""

    @property
    def endpoint_id(self) -> UUID: ...
    @property
    def url(self) -> str: ...
    @property
    def secret(self) -> str: ...
    @property
    def failing_since(self) -> datetime | None: ...
    @property
    def sequence(self) -> int: ...
    @property
    def message_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def attempts(self) -> int: ...
    @property
    def payload(self) -> Any: ...


class Outbox(Protocol):
    """The outbox's SQL (``projections/webhook_queries.py``, given by the composition root)."""

    def claim(self, conn: psycopg.Connection[Any], now: datetime) -> UUID | None: ...
    def head(self, conn: psycopg.Connection[Any], endpoint_id: UUID, now: datetime) -> Any: ...
    def record_success(
        self,
        conn: psycopg.Connection[Any],
        sequence: int,
        endpoint_id: UUID,
        status_code: int,
        at: datetime,
    ) -> None: ...
    def record_failure(
        self,
        conn: psycopg.Connection[Any],
        sequence: int,
        endpoint_id: UUID,
        status_code: int | None,
        error: str | None,
        at: datetime,
        next_attempt_at: datetime | None,
    ) -> None: ...
    def mark_disabled(
        self, conn: psycopg.Connection[Any], endpoint_id: UUID, reason: str, at: datetime
    ) -> None: ...


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to now (an IP literal: itself); none if it does not."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of a message (Standard Webhooks, ``v1``)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def body_of(event_type: str, occurred_at: datetime, data: Any) -> bytes:
    """The message body: the same bytes on every attempt and redelivery."""
    document = {"type": event_type, "timestamp": occurred_at.isoformat(), "data": data}
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None = None
    error: str | None = None
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def describe(self) -> str:
        return str(self.status_code) if self.status_code is not None else str(self.error)


class WebhookSender:
    def __init__(
        self,
        database_url: str,
        outbox: Outbox,
        channel: str,
        disable: Disable,
        *,
        schedule: Sequence[float],
        disable_after_s: float,
        allow_private: bool = False,
        threads: int = 4,
        poll_s: float = 1.0,
        resolve: Resolve = resolve_host,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``schedule``: the delay before each attempt (the first is immediate whatever it
        says); ``threads``: endpoints sent to at once (each borrows a connection from the
        sender's pool while it sends)."""
        self.database_url = database_url
        self.outbox, self.channel = outbox, channel
        self.disable = disable
        self.schedule = tuple(schedule)
        self.disable_after = timedelta(seconds=disable_after_s)
        self.allow_private = allow_private
        self.threads = threads
        self.poll_s = poll_s
        self.resolve = resolve
        self.stopping = threading.Event()
        self._wake = threading.Condition()
        self._wakeups = 0
        # connections are borrowed for one attempt (an idle sender holds about two)
        self.pool = ConnectionPool(
            database_url, min_size=1, max_size=threads, timeout=10, open=False
        )
        self.client = httpx.Client(
            timeout=httpx.Timeout(15.0, connect=5.0),
            follow_redirects=False,
            transport=transport,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
            trust_env=False,  # no proxy from the environment: we connect to the checked address
        )

    # -- running ---------------------------------------------------------------------------------

    def run_forever(self) -> None:
        self.pool.open()
        workers = [
            threading.Thread(target=self._work, name=f"webhooks-{i}", daemon=True)
            for i in range(self.threads)
        ]
        listener = threading.Thread(target=self._listen, name="webhooks-listen", daemon=True)
        for thread in [listener, *workers]:
            thread.start()
        for thread in workers:
            thread.join()
        self.pool.close()
        self.client.close()

    def stop(self) -> None:
        self.stopping.set()
        self._wake_all()

    def _wake_all(self) -> None:
        with self._wake:
            self._wakeups += 1
            self._wake.notify_all()

    def _listen(self) -> None:
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.database_url, autocommit=True) as conn:
                    conn.execute(f'LISTEN "{self.channel}"')
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=self.poll_s, stop_after=1):
                            self._wake_all()
            except psycopg.Error as error:
                log.warning("webhook listener lost its connection", error=str(error))
                self.stopping.wait(1.0)

    def _work(self) -> None:
        while not self.stopping.is_set():
            with self._wake:
                seen = self._wakeups
            try:
                with self.pool.connection() as conn:
                    worked = self.send_one(conn)
            except psycopg.Error as error:  # the pool's timeout included
                log.warning("webhook sender's database call failed", error=str(error))
                self.stopping.wait(1.0)
                continue
            if not worked:
                with self._wake:
                    if self._wakeups == seen and not self.stopping.is_set():
                        self._wake.wait(self.poll_s)

    # -- one attempt -----------------------------------------------------------------------------

    def send_one(self, conn: psycopg.Connection[Any]) -> bool:
        """Claims one due endpoint and makes one attempt at its oldest undelivered message;
        ``False`` if nothing was due."""
        disabled: tuple[UUID, str] | None = None
        q = self.outbox
        with conn.transaction():
            endpoint_id = q.claim(conn, _now())
            if endpoint_id is None:
                return False
            head: Head | None = q.head(conn, endpoint_id, _now())
            if head is None:
                return True  # another sender moved it on meanwhile
            with structlog.contextvars.bound_contextvars(
                webhook_id=str(head.endpoint_id), message_id=head.message_id
            ):
                outcome = self.attempt(head)
                at = _now()
                if outcome.delivered:
                    q.record_success(
                        conn, head.sequence, head.endpoint_id, outcome.status_code or 200, at
                    )
                    WEBHOOK_DELIVERIES.labels("delivered").inc()
                    return True
                attempts = head.attempts + 1
                next_at = (
                    at + timedelta(seconds=self.schedule[attempts])
                    if attempts < len(self.schedule)
                    else None
                )
                q.record_failure(
                    conn,
                    head.sequence,
                    head.endpoint_id,
                    outcome.status_code,
                    outcome.error,
                    at,
                    next_at,
                )
                WEBHOOK_DELIVERIES.labels(
                    "refused_private"
                    if outcome.refused
                    else ("failed_attempt" if next_at else "gave_up")
                ).inc()
                log.info(
                    "webhook attempt failed",
                    attempt=attempts,
                    outcome=outcome.describe(),
                    gave_up=next_at is None,
                )
                failing_since = head.failing_since or at
                if at - failing_since >= self.disable_after:
                    reason = (
                        f"failing since {failing_since.isoformat()}: "
                        f"last status {outcome.describe()}"
                    )
                    disabled = (head.endpoint_id, reason)
                    # recorded on the write side first: the projection will agree with us
                    self.disable(head.endpoint_id, reason)
                    q.mark_disabled(conn, head.endpoint_id, reason, at)
        if disabled is not None:
            log.warning(
                "webhook endpoint disabled", webhook_id=str(disabled[0]), reason=disabled[1]
            )
        return True

    def attempt(self, head: Head) -> Outcome:
        """One POST of the message to the endpoint's checked address."""
        try:
            parts = parse_url(head.url)
        except InvalidRequest as bad:
            return Outcome(error=f"invalid url: {bad}", refused=True)
        host, port = parts.hostname or "", port_of(parts)
        addresses = resolve_with(self.resolve, host, port)
        if not addresses:
            return Outcome(error=f"{host} does not resolve")
        for address in addresses:
            why = address_refusal(address, allow_private=self.allow_private)
            if why is not None:
                return Outcome(error=f"refused: {why}", refused=True)
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        target = parts._replace(netloc=f"{literal}:{port}").geturl()
        body = body_of(head.event_type, head.occurred_at, head.payload)
        timestamp = int(time.time())
        headers = {
            "host": parts.netloc,
            "webhook-id": head.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(head.secret, head.message_id, timestamp, body),
        }
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        try:
            with self.client.stream(
                "POST", target, content=body, headers=headers, extensions=extensions
            ) as response:
                return Outcome(status_code=response.status_code)
        except httpx.HTTPError as error:
            return Outcome(error=f"{type(error).__name__}: {error}"[:500])


def _now() -> datetime:
    return datetime.now(UTC)
