"""The webhooks context: endpoints users register to be told of their events.

An endpoint is event-sourced (:class:`domain.webhook.WebhookEndpoint`). What it is sent is not:
deliveries are a projection of the logs whose events become webhook messages, and the
dispatcher's webhook sender sends them (``infrastructure/webhooks.py``).

An endpoint's URL is checked here, where it enters: http(s) only, no user or password, at most
:data:`MAX_URL` characters, and every address its host resolves to public (private, loopback,
link-local, unspecified, multicast and reserved addresses refused, IPv4-mapped IPv6 included),
unless the operator allows private addresses. The sender checks again before every attempt (a
name may resolve elsewhere by then) and connects to the address it checked.
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from application.base import PixevoApplication, command
from application.errors import InvalidRequest, NotFound
from application.text import NUL_MESSAGE, nul_paths
from domain.ids import uuid7
from domain.webhook import EVENT_TYPES, WebhookEndpoint

MAX_URL = 2000
MAX_EVENTS = len(EVENT_TYPES)


class EndpointNotFound(NotFound, LookupError):
    pass


#: Resolves a host name to every address it has now (an empty list: it does not resolve).
AddressResolver = Callable[[str, int], Sequence[str]]


def make_secret() -> str:
    """A new signing secret: ``whsec_`` and 32 random bytes in base64 (Standard Webhooks)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def address_refusal(address: str, *, allow_private: bool = False) -> str | None:
    """Why a webhook may not be sent to ``address`` (``None``: it may)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    for kind, test in (
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
    ):
        if test:
            return f"{ip} is a {kind} address"
    if allow_private:
        return None
    for kind, test in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),
    ):
        if test:
            return f"{ip} is a {kind} address"
    return None


def parse_url(url: str) -> SplitResult:
    """The URL's parts, if it is one a webhook may be sent to (else :class:`InvalidRequest`)."""
    if nul_paths(url, "url"):
        raise InvalidRequest("url", NUL_MESSAGE)
    if len(url) > MAX_URL:
        raise InvalidRequest("url", f"at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidRequest("url", f"not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest("url", "must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url", "may not carry a user name or password")
    if not parts.hostname:
        raise InvalidRequest("url", "has no host")
    if port == 0:
        raise InvalidRequest("url", "port 0 is not a port")
    if any(c.isspace() for c in url):
        raise InvalidRequest("url", "may not contain white space")
    return parts


def port_of(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def check_destination(
    url: str, resolve: AddressResolver, *, allow_private: bool
) -> tuple[SplitResult, list[str]]:
    """The URL's parts and the addresses its host resolves to now, each one allowed;
    :class:`InvalidRequest` naming why not."""
    parts = parse_url(url)
    host = parts.hostname or ""
    addresses = resolve_with(resolve, host, port_of(parts))
    if not addresses:
        raise InvalidRequest("url", f"the host {host!r} does not resolve")
    for address in addresses:
        why = address_refusal(address, allow_private=allow_private)
        if why is not None:
            raise InvalidRequest(
                "url", f"refused: {why} (of the host {host!r}); webhooks go to public addresses"
            )
    return parts, addresses


def resolve_with(resolve: AddressResolver, host: str, port: int) -> list[str]:
    """The host's addresses: an IP literal is its own (never asked of a resolver)."""
    literal = _literal_only(host, port)
    return list(literal) if literal else list(resolve(host, port))


def endpoint_document(endpoint: WebhookEndpoint, *, secret: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": list(endpoint.events),
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": endpoint.disabled_at,
        "created_at": endpoint.created_on,
    }
    if secret:
        doc["secret"] = endpoint.secret
    return doc


class WebhooksApplication(PixevoApplication):
    name = "webhooks"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        resolve: AddressResolver | None = None,
        allow_private: bool = False,
        make_secret: Callable[[], str] = make_secret,
    ) -> None:
        """``resolve``: the host names' addresses (none given: only IP literals resolve);
        ``allow_private``: endpoints on private addresses are accepted (development, tests)."""
        super().__init__(env)
        self.resolve: AddressResolver = resolve or _literal_only
        self.allow_private = allow_private
        self.make_secret = make_secret

    def register(self, owner_id: UUID, url: str, events: Sequence[str]) -> dict[str, Any]:
        """A new endpoint, with its secret (shown now, and to its owner on ``GET``)."""
        check_destination(url, self.resolve, allow_private=self.allow_private)
        chosen = _checked_events(events)
        endpoint = WebhookEndpoint.register(uuid7(), owner_id, url, chosen, self.make_secret())
        self.save(endpoint)
        return endpoint_document(endpoint)

    def endpoint(self, owner_id: UUID | None, endpoint_id: UUID) -> WebhookEndpoint:
        """The endpoint; with ``owner_id``, only if it is theirs (else not found); a deleted
        endpoint is not found."""
        try:
            endpoint = self.load(endpoint_id, WebhookEndpoint)
        except (AggregateNotFoundError, TypeError):
            raise EndpointNotFound(f"no webhook endpoint {endpoint_id}") from None
        if endpoint.status == "deleted" or (owner_id is not None and endpoint.owner_id != owner_id):
            raise EndpointNotFound(f"no webhook endpoint {endpoint_id}")
        return endpoint

    def get(self, owner_id: UUID, endpoint_id: UUID) -> dict[str, Any]:
        return endpoint_document(self.endpoint(owner_id, endpoint_id))

    @command
    def delete(self, owner_id: UUID, endpoint_id: UUID) -> None:
        endpoint = self.endpoint(owner_id, endpoint_id)
        endpoint.delete()
        self.save(endpoint)

    @command
    def enable(self, owner_id: UUID, endpoint_id: UUID) -> dict[str, Any]:
        """Deliveries to a disabled endpoint resume, from what was pending."""
        endpoint = self.endpoint(owner_id, endpoint_id)
        endpoint.enable()
        self.save(endpoint)
        return endpoint_document(endpoint)

    @command
    def disable(self, endpoint_id: UUID, reason: str) -> bool:
        """The sender gives up on an endpoint that kept failing: ``False`` if it was not
        active (deleted, or disabled already)."""
        try:
            endpoint = self.endpoint(None, endpoint_id)
        except EndpointNotFound:
            return False
        if not endpoint.disable(reason):
            return False
        self.save(endpoint)
        return True


def _checked_events(events: Sequence[str]) -> list[str]:
    if not events:
        raise InvalidRequest("events", "name at least one event type")
    unknown = sorted({e for e in events if e not in EVENT_TYPES})
    if unknown:
        raise InvalidRequest(
            "events",
            f"unknown event type(s) {', '.join(map(repr, unknown))}; known: "
            + ", ".join(EVENT_TYPES),
        )
    return [e for e in EVENT_TYPES if e in set(events)]


def _literal_only(host: str, _: int) -> Sequence[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        return []
