"""Outgoing webhooks: signing and verifying (Standard Webhooks), the URL safety check,
and emitting events as delivery rows.

Signing: ``webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``
with the ``webhook-id`` and ``webhook-timestamp`` headers; while a rotated secret is
still valid, deliveries carry one signature per secret, space-separated, so a
receiver holding either verifies. `verify` is the receiver kit (docs/webhooks.md).

Emitting writes a `WebhookEvent` and one pending `WebhookDelivery` per matching
endpoint in the caller's transaction; the caller enqueues the deliveries after commit
(the worker's ``deliver`` task), and the periodic dispatcher sends any that are due,
so a lost message only delays a delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from deepscreen.config import DEFAULT_WEBHOOK_RETRY_SCHEDULE
from deepscreen.db.webhooks import (
    DeliveryStatus,
    EndpointKind,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from deepscreen.errors import PermanentError

VERDICT_CREATED = "verdict.created"
REVIEW_COMPLETED = "review.completed"
#: A human decision that differs from the model's label.
VERDICT_CHANGED = "verdict.changed"
EVENT_TYPES = (VERDICT_CREATED, REVIEW_COMPLETED, VERDICT_CHANGED)

#: Seconds before each retry after the first attempt, about 18 hours in all: the
#: default of ``Settings.webhook_retry_schedule``.
RETRY_SCHEDULE = DEFAULT_WEBHOOK_RETRY_SCHEDULE

#: A signature older or newer than this (seconds) is refused by `verify`.
DEFAULT_TOLERANCE = 300

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(ValueError):
    """A delivery whose signature, headers or timestamp do not check out."""


class UnsafeURL(PermanentError):
    """A webhook or callback URL that is malformed or points somewhere not allowed."""

    code = "unsafe_url"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_event_id() -> str:
    return "msg_" + secrets.token_urlsafe(18)


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<signature>`` of one delivery under one secret."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every secret given."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    received: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str:
    """Check one delivery against ``secret``; returns its ``webhook-id`` (the
    idempotency key) or raises `WebhookVerificationError`.

    ``received`` maps header names (any case) to values; ``body`` is the raw body.
    """
    lowered = {k.lower(): v for k, v in received.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or signature")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from exc
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is too old or too new")
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return msg_id
    raise WebhookVerificationError("no signature matches")


# ---------------------------------------------------------------- URL safety


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``address``) and what to say (``host``)."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def _allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow: Iterable[str]) -> bool:
    return any(address in ipaddress.ip_network(net, strict=False) for net in allow)


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def check_url(url: str, *, allow_networks: Iterable[str] = (), resolve: bool = True) -> Target:
    """Parse ``url`` and resolve its host; raise `UnsafeURL` unless every address it
    resolves to is public or inside ``allow_networks`` (CIDRs).

    Loopback, private, link-local (cloud metadata) and reserved addresses are
    refused unless allowed. Deliveries connect to the checked address, so DNS
    cannot be switched between the check and the request.
    """
    allow = tuple(allow_networks)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL(f"not an http(s) URL: {url[:200]!r}")
    if parts.username or parts.password:
        raise UnsafeURL("credentials in a webhook URL are not allowed")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not resolve:
        return Target(parts.scheme, parts.hostname, port, path, parts.hostname)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeURL(f"cannot resolve {parts.hostname!r}: {exc}") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
        if _forbidden(address) and not _allowed(address, allow):
            raise UnsafeURL(
                f"{parts.hostname} resolves to {address}, a non-public address; "
                "allow it in DEEPSCREEN_WEBHOOK_ALLOW_NETWORKS if that is intended"
            )
    return Target(parts.scheme, parts.hostname, port, path, addresses[0])


# ------------------------------------------------------------------ emitting


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The endpoint's secret, plus the previous one while it is still valid."""
    out = [endpoint.secret]
    if (
        endpoint.previous_secret
        and endpoint.previous_secret_expires_at is not None
        and endpoint.previous_secret_expires_at > now
    ):
        out.append(endpoint.previous_secret)
    return out


def emit(
    session: Session,
    event_type: str,
    payload: dict[str, Any],
    *,
    now: datetime,
    image_id: int | None = None,
) -> list[int]:
    """Record one event and a pending delivery per active endpoint that wants it;
    returns the delivery ids (for the caller to enqueue after commit)."""
    return emit_many(session, event_type, [(image_id, payload)], now=now)


def interested_endpoints(
    session: Session, event_type: str, image_ids: Iterable[int]
) -> list[WebhookEndpoint]:
    """The active endpoints that want ``event_type``: every subscription, and the
    callbacks of ``image_ids`` (one query, however many images)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    ids = sorted(set(image_ids))
    scope = WebhookEndpoint.kind == EndpointKind.SUBSCRIPTION
    if ids:
        scope = scope | WebhookEndpoint.image_id.in_(ids)
    rows = session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.active.is_(True), scope)
        .order_by(WebhookEndpoint.id)
    )
    return [e for e in rows if event_type in (e.event_types or [])]


def emit_many(
    session: Session,
    event_type: str,
    items: Sequence[tuple[int | None, dict[str, Any]]],
    *,
    now: datetime,
    endpoints: Sequence[WebhookEndpoint] | None = None,
) -> list[int]:
    """`emit` for many (image id, payload) pairs: one query for the endpoints (unless
    ``endpoints``, from `interested_endpoints`, is given) and one insert each for the
    events and their deliveries, not three statements per event. An event no endpoint
    wants is not recorded. Returns the delivery ids."""
    if endpoints is None:
        endpoints = interested_endpoints(
            session, event_type, [i for i, _ in items if i is not None]
        )
    if not endpoints:
        return []
    events: list[dict[str, Any]] = []
    wanted_by: dict[str, list[WebhookEndpoint]] = {}
    for image_id, payload in items:
        wanted = [
            e
            for e in endpoints
            if e.kind is EndpointKind.SUBSCRIPTION
            or (image_id is not None and e.image_id == image_id)
        ]
        if not wanted:
            continue
        event_id = new_event_id()
        wanted_by[event_id] = wanted
        events.append(
            {
                "event_id": event_id,
                "type": event_type,
                "payload": {"type": event_type, "timestamp": now.isoformat(), "data": payload},
                "image_id": image_id,
                "created_at": now,
            }
        )
    if not events:
        return []
    # Core, rows as parameters: one INSERT ... RETURNING per table on PostgreSQL and
    # SQLite alike (the ORM's flush would insert row by row on SQLite). Returned rows
    # are matched by event id, so their order does not matter.
    connection = session.connection()
    inserted = connection.execute(
        insert(WebhookEvent).returning(WebhookEvent.id, WebhookEvent.event_id), events
    ).all()
    deliveries = [
        {
            "event_id": row_id,
            "endpoint_id": e.id,
            "status": DeliveryStatus.PENDING,
            "next_attempt_at": now,
            "created_at": now,
        }
        for row_id, event_id in inserted
        for e in wanted_by[event_id]
    ]
    stmt = insert(WebhookDelivery).returning(WebhookDelivery.id)
    return sorted(connection.execute(stmt, deliveries).scalars())
