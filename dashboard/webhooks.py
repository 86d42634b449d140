"""Webhook pages (``/webhooks/``, admins only): subscriptions and per-submission
callbacks with their last delivery, one endpoint's settings and delivery log, and the
changes `dashboard.subscriptions` makes (all audited).

Only admins see this section at all: an endpoint's page is where its secret is shown,
once, on the answer to creating it or rotating it (rendered, never redirected, so the
secret does not ride in a flash cookie).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from dashboard import db, subscriptions
from dashboard.auth import login_required
from dashboard.filters import id_arg
from dashboard.subscriptions import SubscriptionError
from deepscreen import webhooks
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import Role
from deepscreen.db.webhooks import EndpointKind, WebhookEndpoint

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

PAGE_SIZE = 100
LOG_PAGE_SIZE = 50

View = str | Response | tuple[str, int]


@bp.get("/")
@login_required(Role.ADMIN)
def index() -> str:
    """Subscriptions (or, with ``?kind=callback``, submission callbacks) in id order."""
    kind = (
        EndpointKind.CALLBACK
        if request.args.get("kind") == "callback"
        else EndpointKind.SUBSCRIPTION
    )
    dbs = db.session()
    page, next_after = subscriptions.endpoints(
        dbs, kind=kind, after=id_arg(request.args, "after") or 0, limit=PAGE_SIZE
    )
    return render_template(
        "webhooks/index.html",
        endpoints=page,
        last=subscriptions.last_deliveries(dbs, [e.id for e in page]),
        kind=kind.value,
        next_after=next_after,
        event_types=webhooks.EVENT_TYPES,
    )


@bp.post("/")
@login_required(Role.ADMIN)
def create() -> View:
    form = request.form
    try:
        url = subscriptions.checked_url(form.get("url"), db.settings())
        event_types = subscriptions.checked_event_types(form.getlist("event_types"))
        description = subscriptions.checked_description(form.get("description", ""))
    except SubscriptionError as exc:
        flash(str(exc), "error")
        return index(), exc.status
    dbs = db.session()
    endpoint = subscriptions.create(
        dbs, url=url, event_types=event_types, description=description, user=g.user, now=utcnow()
    )
    dbs.commit()
    return _secret_page(endpoint, endpoint.secret, created=True)


@bp.get("/<int:endpoint_id>")
@login_required(Role.ADMIN)
def detail(endpoint_id: int) -> str:
    """Settings, actions, and the delivery log newest first (``?before=`` pages on)."""
    endpoint = _endpoint(endpoint_id)
    rows, next_before = subscriptions.deliveries(
        db.session(),
        endpoint,
        before=id_arg(request.args, "before"),
        limit=LOG_PAGE_SIZE,
    )
    return render_template(
        "webhooks/detail.html",
        endpoint=endpoint,
        rows=rows,
        next_before=next_before,
        event_types=webhooks.EVENT_TYPES,
        now=utcnow(),
    )


@bp.post("/<int:endpoint_id>")
@login_required(Role.ADMIN)
def update(endpoint_id: int) -> View:
    """Change the URL, the event types and the description."""
    endpoint = _endpoint(endpoint_id)
    form = request.form
    try:
        changes: dict[str, Any] = {
            "event_types": subscriptions.checked_event_types(form.getlist("event_types")),
            "description": subscriptions.checked_description(form.get("description", "")),
        }
        url = form.get("url", "").strip()
        if url and url != endpoint.url:
            changes["url"] = subscriptions.checked_url(url, db.settings())
    except SubscriptionError as exc:
        flash(str(exc), "error")
        return detail(endpoint_id), exc.status
    subscriptions.update(endpoint, changes, user=g.user, now=utcnow())
    db.session().commit()
    flash("Endpoint saved.", "ok")
    return redirect(url_for(".detail", endpoint_id=endpoint.id))


@bp.post("/<int:endpoint_id>/activate")
@login_required(Role.ADMIN)
def activate(endpoint_id: int) -> Response:
    return _set_active(_endpoint(endpoint_id), True)


@bp.post("/<int:endpoint_id>/deactivate")
@login_required(Role.ADMIN)
def deactivate(endpoint_id: int) -> Response:
    return _set_active(_endpoint(endpoint_id), False)


def _set_active(endpoint: WebhookEndpoint, active: bool) -> Response:
    if subscriptions.set_active(endpoint, active, user=g.user, now=utcnow()):
        db.session().commit()
        flash(f"Endpoint {'activated' if active else 'deactivated'}.", "ok")
    return redirect(url_for(".detail", endpoint_id=endpoint.id))


@bp.post("/<int:endpoint_id>/rotate")
@login_required(Role.ADMIN)
def rotate(endpoint_id: int) -> str:
    endpoint = _endpoint(endpoint_id)
    secret = subscriptions.rotate(endpoint, settings=db.settings(), now=utcnow())
    db.session().commit()
    return _secret_page(endpoint, secret, created=False)


@bp.post("/<int:endpoint_id>/delete")
@login_required(Role.ADMIN)
def delete(endpoint_id: int) -> Response:
    endpoint = _endpoint(endpoint_id)
    kind = endpoint.kind.value
    subscriptions.delete(db.session(), endpoint)
    db.session().commit()
    flash(f"Endpoint {endpoint_id} deleted with its delivery log.", "ok")
    return redirect(url_for(".index", kind=kind))


@bp.post("/<int:endpoint_id>/deliveries/<int:delivery_id>/replay")
@login_required(Role.ADMIN)
def replay(endpoint_id: int, delivery_id: int) -> View:
    endpoint = _endpoint(endpoint_id)
    dbs = db.session()
    delivery = subscriptions.delivery_of(dbs, endpoint, delivery_id) or abort(
        404, description=f"no delivery {delivery_id} to endpoint {endpoint_id}"
    )
    try:
        subscriptions.replay(endpoint, delivery, now=utcnow())
    except SubscriptionError as exc:
        flash(str(exc), "error")
        return detail(endpoint_id), exc.status
    dbs.commit()
    flash(f"Delivery {delivery_id} queued again.", "ok")
    return redirect(url_for(".detail", endpoint_id=endpoint.id))


def _endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = subscriptions.endpoint_of(db.session(), endpoint_id)
    if endpoint is None:
        abort(404, description=f"no webhook endpoint {endpoint_id}")
    return endpoint


def _secret_page(endpoint: WebhookEndpoint, secret: str, *, created: bool) -> str:
    return render_template(
        "webhooks/secret.html",
        endpoint=endpoint,
        secret=secret,
        created=created,
        overlap=db.settings().webhook_secret_overlap,
    )
