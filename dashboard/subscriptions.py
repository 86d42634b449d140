"""Webhook endpoints as admins manage them, the same from the pages (`dashboard.webhooks`)
and the API (`dashboard.api_webhooks`): create, edit, activate and deactivate, rotate
the secret, delete, read the delivery log and replay a delivery.

Every change is audited (``webhook.*``) with the endpoint's state before and after,
never with a secret. A secret is stored as it is (deliveries are signed with it) and
shown once: in the answer to the create or rotate request. After a rotation the
previous secret keeps signing, next to the new one, for
``settings.webhook_secret_overlap`` seconds.

A replay makes a delivery a fresh one: pending, due now, its attempt count back at
zero (so it gets the whole retry schedule again), with the same event id, so a
receiver that already has the event recognises it; its last status code and error
stay shown until the next attempt replaces them. It is sent after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dashboard import audit, outbox
from dashboard.accounts import isoformat
from deepscreen import webhooks
from deepscreen.config import Settings
from deepscreen.db.moderation import User
from deepscreen.db.webhooks import (
    DeliveryStatus,
    EndpointKind,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 255


class SubscriptionError(ValueError):
    """A refused change; the message is fit to show, ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ checks


def checked_url(raw: object, settings: Settings) -> str:
    """``raw`` stripped, if it is an http(s) URL that `webhooks.check_url` accepts."""
    url = raw.strip() if isinstance(raw, str) else ""
    if not url:
        raise SubscriptionError("A URL is required.")
    if len(url) > MAX_URL_LENGTH:
        raise SubscriptionError(f"A URL has at most {MAX_URL_LENGTH} characters.")
    try:
        webhooks.check_url(url, allow_networks=settings.webhook_allow_networks)
    except webhooks.UnsafeURL as exc:
        raise SubscriptionError(f"Refused URL: {exc}") from exc
    return url


def checked_event_types(raw: object) -> list[str]:
    """A non-empty list of known event types, in `webhooks.EVENT_TYPES` order."""
    if not isinstance(raw, list | tuple) or not all(isinstance(t, str) for t in raw):
        raise SubscriptionError("event_types is a list of event type names.")
    unknown = sorted(set(raw) - set(webhooks.EVENT_TYPES))
    if unknown:
        raise SubscriptionError(
            f"Unknown event types {', '.join(unknown)}; known: {', '.join(webhooks.EVENT_TYPES)}."
        )
    if not raw:
        raise SubscriptionError("Choose at least one event type.")
    return [t for t in webhooks.EVENT_TYPES if t in raw]


def checked_description(raw: object) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise SubscriptionError("description is a string.")
    text = raw.strip()
    if len(text) > MAX_DESCRIPTION_LENGTH:
        raise SubscriptionError(f"A description has at most {MAX_DESCRIPTION_LENGTH} characters.")
    if not text.isprintable():
        raise SubscriptionError("A description cannot contain control characters.")
    return text or None


# ----------------------------------------------------------------- changes


def describe(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """What the audit log keeps of an endpoint: everything but its secrets."""
    return {
        "kind": endpoint.kind.value,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": list(endpoint.event_types or []),
        "active": endpoint.active,
        "image_id": endpoint.image_id,
        "disabled_reason": endpoint.disabled_reason,
    }


def create(
    session: Session,
    *,
    url: str,
    event_types: list[str],
    description: str | None,
    user: User,
    now: datetime,
) -> WebhookEndpoint:
    """A new active subscription with a fresh secret (``endpoint.secret``)."""
    endpoint = WebhookEndpoint(
        kind=EndpointKind.SUBSCRIPTION,
        url=url,
        description=description,
        secret=webhooks.new_secret(),
        event_types=event_types,
        active=True,
        created_by=user.id,
        created_at=now,
        updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    audit.record(
        "webhook.create", target_type="webhook", target_id=endpoint.id, after=describe(endpoint)
    )
    return endpoint


def update(
    endpoint: WebhookEndpoint, changes: dict[str, Any], *, user: User, now: datetime
) -> None:
    """Apply checked ``changes`` (url, event_types, description, active)."""
    before = describe(endpoint)
    active = changes.pop("active", None)
    for name, value in changes.items():
        setattr(endpoint, name, value)
    after = describe(endpoint)
    if after != before:
        endpoint.updated_at = now
        audit.record(
            "webhook.update",
            target_type="webhook",
            target_id=endpoint.id,
            before=before,
            after=after,
        )
    if active is not None:
        set_active(endpoint, bool(active), user=user, now=now)


def set_active(endpoint: WebhookEndpoint, active: bool, *, user: User, now: datetime) -> bool:
    """Activate (forgetting why it was disabled and its failing streak) or deactivate;
    returns whether anything changed."""
    if endpoint.active is active:
        return False
    before = describe(endpoint)
    endpoint.active = active
    if active:
        endpoint.disabled_reason = endpoint.disabled_at = endpoint.failing_since = None
    else:
        endpoint.disabled_reason = f"deactivated by {user.username}"
        endpoint.disabled_at = now
    endpoint.updated_at = now
    audit.record(
        "webhook.activate" if active else "webhook.deactivate",
        target_type="webhook",
        target_id=endpoint.id,
        before=before,
        after=describe(endpoint),
    )
    return True


def rotate(endpoint: WebhookEndpoint, *, settings: Settings, now: datetime) -> str:
    """A new secret (returned, to be shown once); the old one keeps signing for the
    overlap, so receivers can switch without missing a delivery."""
    overlap = settings.webhook_secret_overlap
    if overlap > 0:
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = now + timedelta(seconds=overlap)
    else:
        endpoint.previous_secret = endpoint.previous_secret_expires_at = None
    endpoint.secret = webhooks.new_secret()
    endpoint.updated_at = now
    audit.record(
        "webhook.rotate",
        target_type="webhook",
        target_id=endpoint.id,
        after={"previous_secret_valid_until": isoformat(endpoint.previous_secret_expires_at)},
    )
    return endpoint.secret


def delete(session: Session, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint and (database cascade) its delivery log."""
    audit.record(
        "webhook.delete", target_type="webhook", target_id=endpoint.id, before=describe(endpoint)
    )
    session.delete(endpoint)


def replay(endpoint: WebhookEndpoint, delivery: WebhookDelivery, *, now: datetime) -> None:
    """Make ``delivery`` pending and due now, attempts back at zero; sent after commit."""
    if not endpoint.active:
        raise SubscriptionError("The endpoint is inactive: activate it before replaying.", 409)
    before = _delivery_state(delivery)
    delivery.status = DeliveryStatus.PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.delivered_at = None
    audit.record(
        "webhook.replay",
        target_type="webhook",
        target_id=endpoint.id,
        before=before,
        after=_delivery_state(delivery),
    )
    outbox.after_commit(deliveries=[delivery.id])


def _delivery_state(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "delivery_id": delivery.id,
        "event_id": delivery.event.event_id,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
    }


# ------------------------------------------------------------------- reads


def endpoint_of(session: Session, endpoint_id: int) -> WebhookEndpoint | None:
    return session.get(WebhookEndpoint, endpoint_id) if 0 < endpoint_id < 2**63 else None


def delivery_of(
    session: Session, endpoint: WebhookEndpoint, delivery_id: int
) -> WebhookDelivery | None:
    found = session.get(WebhookDelivery, delivery_id) if 0 < delivery_id < 2**63 else None
    return found if found is not None and found.endpoint_id == endpoint.id else None


def endpoints(
    session: Session, *, kind: EndpointKind, after: int = 0, limit: int = 100
) -> tuple[list[WebhookEndpoint], int | None]:
    """Endpoints of ``kind`` in id order from ``after``; and the next page's ``after``."""
    rows = list(
        session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.kind == kind, WebhookEndpoint.id > after)
            .order_by(WebhookEndpoint.id)
            .limit(limit + 1)
        )
    )
    page = rows[:limit]
    return page, (page[-1].id if len(rows) > limit else None)


def last_deliveries(session: Session, endpoint_ids: Sequence[int]) -> dict[int, WebhookDelivery]:
    """The newest delivery of each endpoint that has one."""
    if not endpoint_ids:
        return {}
    newest = (
        select(func.max(WebhookDelivery.id))
        .where(WebhookDelivery.endpoint_id.in_(endpoint_ids))
        .group_by(WebhookDelivery.endpoint_id)
    )
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(newest)))
    return {d.endpoint_id: d for d in rows}


def deliveries(
    session: Session, endpoint: WebhookEndpoint, *, before: int | None = None, limit: int = 50
) -> tuple[list[tuple[WebhookDelivery, WebhookEvent]], int | None]:
    """The endpoint's delivery log newest first, below ``before``; and the next ``before``."""
    stmt = (
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
    )
    if before is not None:
        stmt = stmt.where(WebhookDelivery.id < before)
    rows = [
        (d, e)
        for d, e in session.execute(stmt.order_by(WebhookDelivery.id.desc()).limit(limit + 1))
    ]
    page = rows[:limit]
    return page, (page[-1][0].id if len(rows) > limit else None)
