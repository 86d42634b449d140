"""Every route of the app: login required (except the login page, the health check and
static files), and CSRF refused on every state-changing one."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

#: Reachable without logging in.
PUBLIC = {"auth.login", "ops.healthz", "static"}


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
        if endpoint in PUBLIC:
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
        if method not in ("POST", "PUT", "PATCH", "DELETE"):
            continue
        response = admin_client.open(url, method=method, data={"anything": "1"})
        assert response.status_code == 400, (endpoint, url, response.status_code)
        assert "CSRF" in response.text, endpoint
        checked += 1
    assert checked >= 10
