"""Webhook subscriptions from the admin pages and the API: admins only, URL safety,
secrets shown once and rotated with an overlap, activation, the delivery log and
replay (sent to the embedded broker), the audit trail, and escaped output."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from api_client import ApiClient, queued_tasks
from dashboard_helpers import login, make_settings, token_of
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from test_dashboard_api import issue

from dashboard import create_app
from deepscreen import webhooks
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import AuditEvent, Role, User
from deepscreen.db.webhooks import DeliveryStatus, WebhookDelivery, WebhookEndpoint

HOOK = "http://127.0.0.1:9/hook"
XSS = "<script>alert(1)</script>"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Loopback allowed (the tests' receivers live there), a one-hour secret overlap."""
    settings = make_settings(
        tmp_path, webhook_allow_networks=("127.0.0.0/8",), webhook_secret_overlap=3600
    )
    migrate.upgrade(settings)
    return settings


def endpoint_rows(dbs: Session) -> list[WebhookEndpoint]:
    dbs.expire_all()
    rows = list(dbs.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id)))
    dbs.commit()  # end the read: SQLite would hold its lock against the app's requests
    return rows


def audit_actions(dbs: Session) -> list[tuple[str, dict | None, dict | None]]:  # type: ignore[type-arg]
    rows = dbs.scalars(
        select(AuditEvent).where(AuditEvent.action.startswith("webhook.")).order_by(AuditEvent.id)
    )
    out = [(e.action, e.before, e.after) for e in rows]
    dbs.commit()
    return out


def create(client: FlaskClient, url: str = HOOK, **form: object):  # type: ignore[no-untyped-def]
    data = {
        "url": url,
        "event_types": ["review.completed", "verdict.changed"],
        "description": "ops",
        "csrf_token": token_of(client, "/webhooks/"),
    }
    data.update(form)  # type: ignore[arg-type]
    return client.post("/webhooks/", data=data)


def secret_on(html: str) -> str:
    match = re.search(r'id="secret-value">(whsec_[^<]+)<', html)
    assert match, "no secret on the page"
    return match.group(1)


def seed_deliveries(dbs: Session, endpoint_id: int, count: int) -> list[int]:
    """``count`` verdict.changed events whose delivery to the endpoint failed."""
    ids = []
    now = utcnow()
    for i in range(count):
        ids += webhooks.emit(
            dbs, webhooks.VERDICT_CHANGED, {"n": i}, now=now + timedelta(seconds=i)
        )
    for delivery in dbs.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(ids))):
        assert delivery.endpoint_id == endpoint_id
        delivery.status, delivery.attempts = DeliveryStatus.FAILED, 7
        delivery.last_status_code, delivery.last_latency_ms = 500, 12.5
        delivery.last_error, delivery.next_attempt_at = f"HTTP 500: {XSS}", None
    dbs.commit()
    return ids


def test_only_admins_reach_the_webhook_pages(
    admin: FlaskClient, moderator: FlaskClient, viewer: FlaskClient
) -> None:
    assert admin.get("/webhooks/").status_code == 200
    assert 'href="/webhooks/"' in admin.get("/").text  # the nav link
    for client in (moderator, viewer):
        assert client.get("/webhooks/").status_code == 403
        assert client.get("/webhooks/1").status_code == 403
        assert 'href="/webhooks/"' not in client.get("/").text
        response = client.post("/webhooks/", data={"url": HOOK, "csrf_token": token_of(client)})
        assert response.status_code == 403


def test_creating_shows_the_secret_once_and_audits_everything_but_it(
    admin: FlaskClient, dbs: Session
) -> None:
    # When an admin subscribes a loopback URL (allowed in these settings)
    response = create(admin, description=XSS)
    assert response.status_code == 200
    secret = secret_on(response.text)
    # Then the secret is stored as it is (it signs) and shown on that page only
    [row] = endpoint_rows(dbs)
    assert row.secret == secret and row.url == HOOK and row.active
    assert row.event_types == ["review.completed", "verdict.changed"]
    for page in ("/webhooks/", f"/webhooks/{row.id}"):
        html = admin.get(page).text
        assert secret not in html and HOOK in html
        assert XSS not in html and "&lt;script&gt;" in html  # escaped
    [(action, before, after)] = audit_actions(dbs)
    assert action == "webhook.create" and before is None
    assert after is not None and after["url"] == HOOK and secret not in str(after)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata: never allowed here
        "http://10.1.2.3/hook",  # private
        "ftp://127.0.0.1/hook",
        "http://user:pw@127.0.0.1/hook",
        "not a url",
    ],
)
def test_unsafe_urls_are_refused(admin: FlaskClient, dbs: Session, url: str) -> None:
    response = create(admin, url=url)
    assert response.status_code == 400 and "Refused URL" in response.text
    assert endpoint_rows(dbs) == []


def test_loopback_is_refused_without_the_allow_list(
    settings: Settings, make_user: Callable[..., User], dbs: Session
) -> None:
    # Given the same database served with no allow-list
    strict = create_app(dataclasses.replace(settings, webhook_allow_networks=()), TESTING=True)
    client = strict.test_client()
    login(client, make_user("strict-admin", Role.ADMIN).username)
    response = create(client)
    assert response.status_code == 400 and "127.0.0.1" in response.text
    assert endpoint_rows(dbs) == []


def test_rotation_keeps_the_previous_secret_signing_until_the_overlap_ends(
    admin: FlaskClient, dbs: Session
) -> None:
    old = secret_on(create(admin).text)
    [row] = endpoint_rows(dbs)
    response = admin.post(
        f"/webhooks/{row.id}/rotate", data={"csrf_token": token_of(admin, f"/webhooks/{row.id}")}
    )
    assert response.status_code == 200
    new = secret_on(response.text)
    assert new != old and old not in response.text
    [row] = endpoint_rows(dbs)
    assert row.secret == new and row.previous_secret == old
    assert row.previous_secret_expires_at is not None
    # Then deliveries are signed with both for an hour, then with the new one only
    now = utcnow()
    assert webhooks.signing_secrets(row, now) == [new, old]
    assert webhooks.signing_secrets(row, now + timedelta(seconds=3601)) == [new]
    assert "still signing until" in admin.get(f"/webhooks/{row.id}").text
    action, _, after = audit_actions(dbs)[-1]
    assert action == "webhook.rotate" and old not in str(after) and new not in str(after)


def test_deactivating_says_why_and_activating_clears_the_failure(
    admin: FlaskClient, dbs: Session
) -> None:
    create(admin)
    [row] = endpoint_rows(dbs)
    # Given the worker disabled the endpoint after it kept failing
    row.active, row.disabled_reason = False, f"failing since yesterday: {XSS}"
    row.disabled_at = row.failing_since = utcnow()
    dbs.commit()
    for page in ("/webhooks/", f"/webhooks/{row.id}"):
        html = admin.get(page).text
        assert "failing since yesterday" in html and XSS not in html
    token = token_of(admin, f"/webhooks/{row.id}")
    assert admin.post(f"/webhooks/{row.id}/activate", data={"csrf_token": token}).status_code == 302
    [row] = endpoint_rows(dbs)
    assert row.active and row.disabled_reason is None and row.failing_since is None
    assert (
        admin.post(f"/webhooks/{row.id}/deactivate", data={"csrf_token": token}).status_code == 302
    )
    [row] = endpoint_rows(dbs)
    assert (
        not row.active and row.disabled_reason and row.disabled_reason.startswith("deactivated by")
    )
    assert [a for a, _, _ in audit_actions(dbs)] == [
        "webhook.create",
        "webhook.activate",
        "webhook.deactivate",
    ]


def test_editing_event_types_and_description(admin: FlaskClient, dbs: Session) -> None:
    create(admin)
    [row] = endpoint_rows(dbs)
    token = token_of(admin, f"/webhooks/{row.id}")
    refused = admin.post(f"/webhooks/{row.id}", data={"event_types": ["nope"], "csrf_token": token})
    assert refused.status_code == 400 and "Unknown event types" in refused.text
    saved = admin.post(
        f"/webhooks/{row.id}",
        data={"event_types": ["verdict.created"], "description": "new", "csrf_token": token},
    )
    assert saved.status_code == 302
    [row] = endpoint_rows(dbs)
    assert row.event_types == ["verdict.created"] and row.description == "new"
    _, before, after = audit_actions(dbs)[-1]
    assert before and after and before["event_types"] != after["event_types"]


def test_the_delivery_log_pages_newest_first_and_replay_resends(
    admin: FlaskClient, dbs: Session, settings: Settings
) -> None:
    create(admin)
    [row] = endpoint_rows(dbs)
    ids = seed_deliveries(dbs, row.id, 55)
    page = admin.get(f"/webhooks/{row.id}").text
    shown = [int(i) for i in re.findall(r'data-delivery-id="(\d+)"', page)]
    assert shown == sorted(ids, reverse=True)[:50]
    assert "HTTP 500" in page and XSS not in page and "12 ms" in page
    older = re.search(r'href="([^"]+before=\d+)"', page)
    assert older is not None
    rest = admin.get(older.group(1).replace("&amp;", "&")).text
    assert [int(i) for i in re.findall(r'data-delivery-id="(\d+)"', rest)] == sorted(ids)[:5][::-1]
    assert "failed (500)" in admin.get("/webhooks/").text  # the last outcome in the list
    # When the admin replays the oldest one
    target = ids[0]
    token = token_of(admin, f"/webhooks/{row.id}")
    response = admin.post(
        f"/webhooks/{row.id}/deliveries/{target}/replay", data={"csrf_token": token}
    )
    assert response.status_code == 302
    # Then it is pending, due now, from attempt zero, and its task is queued by name
    delivery = dbs.get_one(WebhookDelivery, target)
    dbs.refresh(delivery)
    assert delivery.status is DeliveryStatus.PENDING and delivery.attempts == 0
    assert delivery.next_attempt_at is not None
    assert utcnow() - delivery.next_attempt_at < timedelta(minutes=1)
    dbs.commit()
    assert queued_tasks(settings) == [("deepscreen.deliver_webhook", [target])]
    action, before, after = audit_actions(dbs)[-1]
    assert action == "webhook.replay" and before and after
    assert (before["status"], before["attempts"]) == ("failed", 7)
    assert (after["status"], after["attempts"]) == ("pending", 0)
    # And an inactive endpoint refuses a replay; another endpoint's delivery is unknown
    admin.post(f"/webhooks/{row.id}/deactivate", data={"csrf_token": token})
    refused = admin.post(
        f"/webhooks/{row.id}/deliveries/{ids[1]}/replay", data={"csrf_token": token}
    )
    assert refused.status_code == 409 and "activate it" in refused.text
    assert (
        admin.post(
            f"/webhooks/{row.id + 1}/deliveries/{ids[1]}/replay", data={"csrf_token": token}
        ).status_code
        == 404
    )
    assert len(queued_tasks(settings)) == 1


def test_deleting_removes_the_endpoint_and_its_log(admin: FlaskClient, dbs: Session) -> None:
    create(admin)
    [row] = endpoint_rows(dbs)
    endpoint_id = row.id
    seed_deliveries(dbs, endpoint_id, 2)
    token = token_of(admin, f"/webhooks/{endpoint_id}")
    response = admin.post(f"/webhooks/{endpoint_id}/delete", data={"csrf_token": token})
    assert response.status_code == 302
    assert endpoint_rows(dbs) == []
    assert dbs.scalar(select(func.count(WebhookDelivery.id))) == 0
    dbs.commit()
    assert audit_actions(dbs)[-1][0] == "webhook.delete"
    assert admin.get(f"/webhooks/{endpoint_id}").status_code == 404


# ---------------------------------------------------------------------- API


@pytest.fixture
def admin_api(app: Flask, dbs: Session, make_user: Callable[..., User]) -> ApiClient:
    return ApiClient(app.test_client(), issue(dbs, make_user("api-admin", Role.ADMIN)))


def test_the_api_manages_endpoints_for_admin_tokens_only(
    admin_api: ApiClient,
    app: Flask,
    dbs: Session,
    make_user: Callable[..., User],
    settings: Settings,
) -> None:
    moderator_token = issue(dbs, make_user("api-mod", Role.MODERATOR))
    assert admin_api.get("/webhooks", token=moderator_token).status_code == 403
    assert admin_api.post("/webhooks", token=moderator_token, json={"url": HOOK}).status_code == 403
    assert admin_api.get("/webhooks", token=None).status_code == 401
    # Create (no CSRF token: a bearer request without a cookie needs none)
    created = admin_api.post("/webhooks", json={"url": HOOK, "description": "api"})
    assert created.status_code == 201
    body = created.get_json()
    secret, endpoint_id = body["secret"], body["id"]
    assert body["event_types"] == list(webhooks.EVENT_TYPES)  # every type by default
    assert created.headers["Location"].endswith(f"/api/v1/webhooks/{endpoint_id}")
    # Read: the secret is never shown again
    one = admin_api.get(f"/webhooks/{endpoint_id}").get_json()
    assert "secret" not in one and one["last_delivery"] is None
    listed = admin_api.get("/webhooks").get_json()
    assert [e["id"] for e in listed["items"]] == [endpoint_id] and secret not in str(listed)
    assert admin_api.get("/webhooks", query_string={"kind": "nope"}).status_code == 400
    # Refused input
    for bad in (
        {"url": "http://10.0.0.1/"},
        {"url": HOOK, "event_types": []},
        {"url": HOOK, "colour": "red"},
    ):
        assert admin_api.post("/webhooks", json=bad).status_code == 400, bad
    assert admin_api.post("/webhooks", data="x", content_type="text/plain").status_code == 400
    # Change, deactivate and reactivate
    patched = admin_api.call(
        "patch",
        f"/webhooks/{endpoint_id}",
        json={"event_types": ["verdict.changed"], "active": False},
    ).get_json()
    assert patched["event_types"] == ["verdict.changed"] and patched["active"] is False
    assert patched["disabled_reason"] == "deactivated by api-admin"
    patched = admin_api.call("patch", f"/webhooks/{endpoint_id}", json={"active": True}).get_json()
    assert patched["active"] is True and patched["disabled_reason"] is None
    # Rotate: a new secret once, the old one valid for the overlap
    rotated = admin_api.post(f"/webhooks/{endpoint_id}/rotate").get_json()
    assert rotated["secret"] != secret and rotated["previous_secret_valid_until"] is not None
    # Deliveries and replay
    ids = seed_deliveries(dbs, endpoint_id, 3)
    log = admin_api.get(f"/webhooks/{endpoint_id}/deliveries", query_string={"limit": 2})
    page = log.get_json()
    assert [d["id"] for d in page["items"]] == [ids[2], ids[1]] and page["next_before"] == ids[1]
    assert page["items"][0]["event_type"] == "verdict.changed"
    assert page["items"][0]["event_id"].startswith("msg_")
    rest = admin_api.get(
        f"/webhooks/{endpoint_id}/deliveries", query_string={"before": page["next_before"]}
    ).get_json()
    assert [d["id"] for d in rest["items"]] == [ids[0]] and rest["next_before"] is None
    replayed = admin_api.post(f"/webhooks/{endpoint_id}/deliveries/{ids[0]}/replay")
    assert replayed.status_code == 202
    assert replayed.get_json()["status"] == "pending" and replayed.get_json()["attempts"] == 0
    assert queued_tasks(settings) == [("deepscreen.deliver_webhook", [ids[0]])]
    assert admin_api.get(f"/webhooks/{endpoint_id}").get_json()["last_delivery"]["id"] == ids[2]
    assert admin_api.post(f"/webhooks/{endpoint_id}/deliveries/999999/replay").status_code == 404
    # Delete
    assert admin_api.call("delete", f"/webhooks/{endpoint_id}").status_code == 204
    assert admin_api.get(f"/webhooks/{endpoint_id}").status_code == 404
    assert admin_api.call("delete", f"/webhooks/{endpoint_id}").status_code == 404
    actions = [a for a, _, _ in audit_actions(dbs)]
    assert actions == [
        "webhook.create",
        "webhook.update",
        "webhook.deactivate",
        "webhook.activate",
        "webhook.rotate",
        "webhook.replay",
        "webhook.delete",
    ]
    assert secret not in str(audit_actions(dbs)) and rotated["secret"] not in str(
        audit_actions(dbs)
    )


def test_a_bearer_request_with_a_session_cookie_still_needs_the_csrf_token(
    admin: FlaskClient, dbs: Session, make_user: Callable[..., User]
) -> None:
    token = issue(dbs, make_user("both", Role.ADMIN))
    # A logged-in browser (cookie) that also sends a bearer header
    response = admin.post(
        "/api/v1/webhooks", json={"url": HOOK}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 400 and "CSRF" in response.get_json()["error"]
    assert endpoint_rows(dbs) == []


def test_a_logged_in_admin_may_use_the_api_with_the_csrf_header(
    admin: FlaskClient, dbs: Session
) -> None:
    token = token_of(admin)
    response = admin.post("/api/v1/webhooks", json={"url": HOOK}, headers={"X-CSRF-Token": token})
    assert response.status_code == 201
    assert len(endpoint_rows(dbs)) == 1
