"""Accounts: login required everywhere, sessions that die on logout, CSRF, throttling."""

from __future__ import annotations

import re
from collections.abc import Callable

from dashboard_helpers import PASSWORD, csrf_from, login, token_of
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from deepscreen.db.moderation import AuditEvent, Role, User


def test_login_page_and_health_check_are_public_and_the_rest_redirects(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/login").status_code == 200
    for path in ("/", "/images", "/audit/", "/stats/", "/models/", "/users/"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next="), path


def test_a_user_logs_in_and_out_and_the_old_cookie_is_dead(
    app: Flask, make_user: Callable[..., User]
) -> None:
    make_user("alice", Role.MODERATOR)
    client = app.test_client()
    response = login(client, "alice")
    assert response.status_code == 302
    cookie = client.get_cookie("deepscreen_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    assert client.get("/audit/").status_code == 200
    # When the user logs out
    client.post("/logout", data={"csrf_token": token_of(client, "/audit/")})
    # Then a replay of the old cookie is refused: the server rotated the session token
    replay = app.test_client()
    replay.set_cookie("deepscreen_session", cookie.value)
    assert replay.get("/audit/").status_code == 302


def test_cookies_are_secure_by_default(tmp_path, make_user) -> None:  # type: ignore[no-untyped-def]
    from dashboard_helpers import make_settings

    from dashboard import create_app

    settings = make_settings(tmp_path, cookie_secure=True)
    app = create_app(settings, TESTING=True)
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True


def test_a_wrong_password_fails_and_repeated_failures_lock_the_account(
    app: Flask, make_user: Callable[..., User], dbs: Session
) -> None:
    make_user("bob", Role.VIEWER)
    client = app.test_client()
    # Given 3 wrong passwords (the configured maximum)
    for _ in range(3):
        assert login(client, "bob", "wrong").status_code == 401
    # Then even the right password is refused for a while, and it is all audited
    locked = login(client, "bob", PASSWORD)
    assert locked.status_code == 401 and "Wrong username or password." in locked.text
    assert login(client, "bob", "wrong").status_code == 401
    actions = list(dbs.scalars(select(AuditEvent.action).where(AuditEvent.username == "bob")))
    assert actions.count("login.failed") == 3 and "login.locked" in actions


def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password(app: Flask) -> None:
    response = login(app.test_client(), "nobody", "whatever")
    assert response.status_code == 401 and "Wrong username or password." in response.text


def test_a_locked_account_cannot_be_told_from_an_unknown_name(
    app: Flask, make_user: Callable[..., User]
) -> None:
    # Given a real account and a name nobody has, each failing more than the maximum
    make_user("erin", Role.VIEWER)
    answers: dict[str, list[tuple[int, str]]] = {"erin": [], "nobody": []}
    for name, answer in answers.items():
        client = app.test_client()
        for _ in range(6):
            response = login(client, name, "wrong")
            page = re.sub(r'(csrf_token" value|csrf-token" content)="[^"]*"', "", response.text)
            answer.append((response.status_code, page))
    # Then both got the same answers, attempt by attempt (no 429 that names the account)
    assert answers["erin"] == answers["nobody"]
    assert {status for status, _ in answers["erin"]} == {401}


def test_a_post_without_the_csrf_token_is_refused(app: Flask, make_user) -> None:  # type: ignore[no-untyped-def]
    make_user("carol", Role.ADMIN)
    client = app.test_client()
    page = client.get("/login")
    no_token = client.post("/login", data={"username": "carol", "password": PASSWORD})
    assert no_token.status_code == 400
    wrong = client.post(
        "/login", data={"username": "carol", "password": PASSWORD, "csrf_token": "forged"}
    )
    assert wrong.status_code == 400
    ok = client.post(
        "/login",
        data={"username": "carol", "password": PASSWORD, "csrf_token": csrf_from(page.text)},
    )
    assert ok.status_code == 302


def test_login_never_redirects_off_site(app: Flask, make_user) -> None:  # type: ignore[no-untyped-def]
    make_user("dave", Role.VIEWER)
    client = app.test_client()
    page = client.get("/login")
    response = client.post(
        "/login",
        data={
            "username": "dave",
            "password": PASSWORD,
            "next": "//evil.example/phish",
            "csrf_token": csrf_from(page.text),
        },
    )
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_pages_carry_security_headers(viewer: FlaskClient) -> None:
    response = viewer.get("/audit/")
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
