"""Every route of the app: login required (except the login page, the health check and
static files), and CSRF refused on every state-changing one; the machine endpoints, which
take neither, take their shared secret instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dashboard_helpers import login, make_settings
from flask import Flask
from flask.testing import FlaskClient

from dashboard import create_app
from dashboard.auth import new_user
from deepscreen.db import migrate
from deepscreen.db.moderation import Role
from deepscreen.db.session import make_engine, make_session_factory, session_scope

#: Reachable without logging in.
PUBLIC = {"auth.login", "ops.healthz", "static"}
#: Called by machines, not people: authenticated by a shared secret instead of a login,
#: and sent without a cookie, hence without a CSRF token (security.CSRF_EXEMPT). Bucket
#: notifications (dashboard/events.py); test_dashboard_events.py covers their secret.
MACHINE = {"events.s3", "events.seaweedfs"}


def concrete(rule: str) -> str:
    """A URL for ``rule`` with every variable filled in (ids 1, names ``x``)."""
    return re.sub(r"<(?:(\w+):)?(\w+)>", lambda m: "1" if m.group(1) == "int" else "x", rule)


def routes(app: Flask) -> list[tuple[str, str, str]]:
    out = []
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule.endpoint, method, concrete(rule.rule)))
    return out


def test_the_app_has_the_routes_this_file_checks(app: Flask) -> None:
    endpoints = {endpoint for endpoint, _, _ in routes(app)}
    for expected in ("review.queue", "review.decide", "review.bulk", "audit.index", "api.images"):
        assert expected in endpoints
    assert len(endpoints) > 25


def test_every_route_but_login_and_health_needs_a_login(app: Flask) -> None:
    client = app.test_client()
    checked = 0
    for endpoint, method, url in routes(app):
        if endpoint in PUBLIC | MACHINE:
            continue
        # A session with a CSRF token but no user: reaches the login check, not the CSRF one
        with client.session_transaction() as session:
            session["csrf"] = "t"
        response = client.open(url, method=method, data={"csrf_token": "t"})
        assert response.status_code in (302, 401), (endpoint, method, url, response.status_code)
        if response.status_code == 302:
            assert response.headers["Location"].startswith("/login"), (endpoint, url)
        checked += 1
    assert checked > 20


@pytest.fixture
def admin_client(admin: FlaskClient) -> FlaskClient:
    return admin


def test_every_state_changing_route_refuses_a_request_without_the_csrf_token(
    app: Flask, admin_client: FlaskClient
) -> None:
    checked = 0
    for endpoint, method, url in routes(app):
        if method not in ("POST", "PUT", "PATCH", "DELETE") or endpoint in MACHINE:
            continue
        response = admin_client.open(url, method=method, data={"anything": "1"})
        assert response.status_code == 400, (endpoint, url, response.status_code)
        assert "CSRF" in response.text, endpoint
        checked += 1
    assert checked >= 10


def test_machine_routes_take_their_secret_and_nothing_else(tmp_path: Path) -> None:
    # Given events on, and an admin's browser session with its CSRF token
    settings = make_settings(tmp_path, events_secret="machine-secret")
    migrate.upgrade(settings)
    engine = make_engine(settings)
    with session_scope(make_session_factory(engine)) as session:
        session.add(new_user("root", Role.ADMIN, "correct horse battery staple"))
    engine.dispose()
    app = create_app(settings, TESTING=True)
    client = app.test_client()
    assert login(client, "root").status_code == 302
    with client.session_transaction() as session:
        token = session["csrf"]
    endpoints = {rule.endpoint: rule.rule for rule in app.url_map.iter_rules()}
    assert MACHINE <= endpoints.keys()
    for endpoint in MACHINE:
        # When the logged-in browser posts without the secret (a cross-site forgery could)
        response = client.post(endpoints[endpoint], json={}, headers={"X-CSRF-Token": token})
        # Then the session cookie grants nothing
        assert response.status_code == 401, endpoint
        # And with the secret, no cookie and no CSRF token are needed
        response = app.test_client().post(
            endpoints[endpoint], json={}, headers={"Authorization": "Bearer machine-secret"}
        )
        assert response.status_code in (200, 400), (endpoint, response.status_code)
