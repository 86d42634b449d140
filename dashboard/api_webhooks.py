"""The webhook API (``/api/v1/webhooks``, admin tokens only): list, create, read,
change and delete endpoints, rotate a secret, read the delivery log, replay a delivery.

The same operations as the admin pages (`dashboard.subscriptions`), audited the same
way. Bodies are JSON objects; unknown fields are refused. A secret appears once, in
the answer to the request that made it (create, rotate). Described in
`dashboard.openapi`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, g, jsonify, request
from werkzeug.wrappers import Response

from dashboard import api, db, subscriptions
from dashboard.accounts import isoformat
from dashboard.auth import can
from dashboard.subscriptions import SubscriptionError
from deepscreen import webhooks
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import Role
from deepscreen.db.webhooks import EndpointKind, WebhookDelivery, WebhookEndpoint, WebhookEvent

bp = Blueprint("api_webhooks", __name__, url_prefix=api.URL_PREFIX + "/webhooks")

LOG_LIMIT = 50
MAX_LOG_LIMIT = 500
#: Fields a create (POST) or a change (PATCH) may carry.
CREATE_FIELDS = frozenset({"url", "event_types", "description"})
PATCH_FIELDS = frozenset({"url", "event_types", "description", "active"})


@bp.before_request
def _admins_only() -> Response | None:
    refused = api.authenticate()
    if refused is not None:
        return refused
    if not can(Role.ADMIN):
        return api.error(403, "webhooks need an admin's token")
    return None


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"  # secrets and receiver errors
    return response


@bp.errorhandler(api.BadRequest)
def _bad_request(exc: api.BadRequest) -> Response:
    return api.error(400, "invalid query parameters", exc.details)


@bp.errorhandler(SubscriptionError)
def _refused(exc: SubscriptionError) -> Response:
    return api.error(exc.status, str(exc))


@bp.get("")
def list_endpoints() -> Response:
    """Endpoints of one kind (subscriptions by default) in id order, keyset pages."""
    details: list[str] = []
    raw_kind = request.args.get("kind", EndpointKind.SUBSCRIPTION.value)
    if raw_kind not in {k.value for k in EndpointKind}:
        details.append("kind must be subscription or callback")
    limit = api.int_arg("limit", api.DEFAULT_LIMIT, 1, api.MAX_LIMIT, details)
    after = api.int_arg("after", 0, 0, api.MAX_ID, details)
    if details:
        raise api.BadRequest(details)
    dbs = db.session()
    page, next_after = subscriptions.endpoints(
        dbs, kind=EndpointKind(raw_kind), after=after, limit=limit
    )
    last = subscriptions.last_deliveries(dbs, [e.id for e in page])
    now = utcnow()
    return jsonify(
        items=[endpoint_json(e, last.get(e.id), now=now) for e in page],
        limit=limit,
        next_after=next_after,
    )


@bp.post("")
def create() -> Response:
    body = _body(CREATE_FIELDS)
    settings = db.settings()
    url = subscriptions.checked_url(body.get("url"), settings)
    event_types = subscriptions.checked_event_types(
        body.get("event_types", list(webhooks.EVENT_TYPES))
    )
    description = subscriptions.checked_description(body.get("description"))
    dbs = db.session()
    now = utcnow()
    endpoint = subscriptions.create(
        dbs, url=url, event_types=event_types, description=description, user=g.user, now=now
    )
    dbs.commit()
    response = jsonify({**endpoint_json(endpoint, None, now=now), "secret": endpoint.secret})
    response.status_code = 201
    response.headers["Location"] = f"{request.script_root}{bp.url_prefix}/{endpoint.id}"
    return response


@bp.get("/<int:endpoint_id>")
def get(endpoint_id: int) -> Response:
    endpoint = _endpoint(endpoint_id)
    last = subscriptions.last_deliveries(db.session(), [endpoint.id])
    return jsonify(endpoint_json(endpoint, last.get(endpoint.id), now=utcnow()))


@bp.patch("/<int:endpoint_id>")
def patch(endpoint_id: int) -> Response:
    """Change any of url, event_types, description, active (activating clears why the
    endpoint was disabled and its failing streak)."""
    endpoint = _endpoint(endpoint_id)
    body = _body(PATCH_FIELDS)
    changes: dict[str, Any] = {}
    if "url" in body:
        changes["url"] = subscriptions.checked_url(body["url"], db.settings())
    if "event_types" in body:
        changes["event_types"] = subscriptions.checked_event_types(body["event_types"])
    if "description" in body:
        changes["description"] = subscriptions.checked_description(body["description"])
    if "active" in body:
        if not isinstance(body["active"], bool):
            raise SubscriptionError("active is true or false.")
        changes["active"] = body["active"]
    now = utcnow()
    subscriptions.update(endpoint, changes, user=g.user, now=now)
    dbs = db.session()
    dbs.commit()
    last = subscriptions.last_deliveries(dbs, [endpoint.id])
    return jsonify(endpoint_json(endpoint, last.get(endpoint.id), now=now))


@bp.delete("/<int:endpoint_id>")
def delete(endpoint_id: int) -> Response:
    dbs = db.session()
    subscriptions.delete(dbs, _endpoint(endpoint_id))
    dbs.commit()
    return Response(status=204)


@bp.post("/<int:endpoint_id>/rotate")
def rotate(endpoint_id: int) -> Response:
    """A new secret, shown in this answer only; the previous one keeps signing for
    ``previous_secret_valid_until``."""
    endpoint = _endpoint(endpoint_id)
    now = utcnow()
    secret = subscriptions.rotate(endpoint, settings=db.settings(), now=now)
    dbs = db.session()
    dbs.commit()
    last = subscriptions.last_deliveries(dbs, [endpoint.id])
    return jsonify({**endpoint_json(endpoint, last.get(endpoint.id), now=now), "secret": secret})


@bp.get("/<int:endpoint_id>/deliveries")
def deliveries(endpoint_id: int) -> Response:
    """The delivery log, newest first; page with ``before`` = ``next_before``."""
    endpoint = _endpoint(endpoint_id)
    details: list[str] = []
    limit = api.int_arg("limit", LOG_LIMIT, 1, MAX_LOG_LIMIT, details)
    before = api.int_arg("before", 0, 1, api.MAX_ID, details)
    if details:
        raise api.BadRequest(details)
    rows, next_before = subscriptions.deliveries(
        db.session(), endpoint, before=before or None, limit=limit
    )
    return jsonify(
        items=[delivery_json(d, e) for d, e in rows], limit=limit, next_before=next_before
    )


@bp.post("/<int:endpoint_id>/deliveries/<int:delivery_id>/replay")
def replay(endpoint_id: int, delivery_id: int) -> Response:
    """Send a delivery again (same event id), from attempt zero; 409 if the endpoint is
    inactive."""
    endpoint = _endpoint(endpoint_id)
    dbs = db.session()
    delivery = subscriptions.delivery_of(dbs, endpoint, delivery_id)
    if delivery is None:
        raise SubscriptionError(f"no delivery {delivery_id} to endpoint {endpoint_id}", 404)
    subscriptions.replay(endpoint, delivery, now=utcnow())
    dbs.commit()
    response = jsonify(delivery_json(delivery, delivery.event))
    response.status_code = 202
    return response


def _endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = subscriptions.endpoint_of(db.session(), endpoint_id)
    if endpoint is None:
        raise SubscriptionError(f"no webhook endpoint {endpoint_id}", 404)
    return endpoint


def _body(allowed: frozenset[str]) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise SubscriptionError("expected a JSON object body (Content-Type: application/json)")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise SubscriptionError(
            f"unknown fields {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return body


def endpoint_json(
    endpoint: WebhookEndpoint, last: WebhookDelivery | None, *, now: datetime
) -> dict[str, Any]:
    """An endpoint for the API: everything but its secrets."""
    overlap_ends = endpoint.previous_secret_expires_at
    return {
        "id": endpoint.id,
        "kind": endpoint.kind.value,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": list(endpoint.event_types or []),
        "image_id": endpoint.image_id,
        "active": endpoint.active,
        "disabled_reason": endpoint.disabled_reason,
        "disabled_at": isoformat(endpoint.disabled_at),
        "failing_since": isoformat(endpoint.failing_since),
        "previous_secret_valid_until": isoformat(overlap_ends)
        if endpoint.previous_secret and overlap_ends is not None and overlap_ends > now
        else None,
        "created_at": isoformat(endpoint.created_at),
        "updated_at": isoformat(endpoint.updated_at),
        "last_delivery": None
        if last is None
        else {
            "id": last.id,
            "status": last.status.value,
            "last_status_code": last.last_status_code,
            "last_attempt_at": isoformat(last.last_attempt_at),
        },
    }


def delivery_json(delivery: WebhookDelivery, event: WebhookEvent) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": event.event_id,
        "event_type": event.type,
        "image_id": event.image_id,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_latency_ms": delivery.last_latency_ms,
        "last_error": delivery.last_error,
        "next_attempt_at": isoformat(delivery.next_attempt_at),
        "last_attempt_at": isoformat(delivery.last_attempt_at),
        "delivered_at": isoformat(delivery.delivered_at),
        "created_at": isoformat(delivery.created_at),
    }
