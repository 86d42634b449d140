"""Accounts: admins manage users (audited, the last admin protected), everyone manages
their own password, blur setting and API tokens, and `deepscreen create-user`."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from dashboard_helpers import PASSWORD, login, token_of
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from dashboard.accounts import hash_token
from dashboard.cli import register_create_user
from deepscreen.config import Settings
from deepscreen.db.moderation import ApiToken, AuditEvent, Role, User

NEW_PASSWORD = "a brand new passphrase"
XSS = "<script>alert(1)</script>"

MakeUser = Callable[..., User]


def logged_in(app: Flask, make_user: MakeUser, name: str, role: Role) -> tuple[FlaskClient, User]:
    user = make_user(name, role)
    client = app.test_client()
    assert login(client, name).status_code == 302
    return client, user


def post(client: FlaskClient, path: str, **data: str) -> TestResponse:
    """A form post carrying the session's CSRF token."""
    return client.post(path, data={**data, "csrf_token": token_of(client, "/users/me")})


def events(dbs: Session, action: str) -> list[AuditEvent]:
    rows = list(dbs.scalars(select(AuditEvent).where(AuditEvent.action == action)))
    dbs.commit()  # SQLite: never hold a transaction (and its write lock) across a request
    return rows


def reload(dbs: Session, user: User) -> User:
    fresh = dbs.get_one(User, user.id, populate_existing=True)
    dbs.commit()
    return fresh


@pytest.fixture
def boss(app: Flask, make_user: MakeUser) -> tuple[FlaskClient, User]:
    return logged_in(app, make_user, "boss", Role.ADMIN)


def test_only_admins_manage_users(
    moderator: FlaskClient, viewer: FlaskClient, admin: FlaskClient, make_user: MakeUser
) -> None:
    target = make_user("target", Role.VIEWER)
    for client in (moderator, viewer):
        assert client.get("/users/").status_code == 403
        assert client.get(f"/users/{target.id}").status_code == 403
        assert client.get("/users/me").status_code == 200
        for path, data in [
            ("/users/", {"username": "x", "role": "admin", "password": PASSWORD}),
            (f"/users/{target.id}/role", {"role": "admin"}),
            (f"/users/{target.id}/deactivate", {}),
            (f"/users/{target.id}/password", {"password": NEW_PASSWORD}),
            (f"/users/{target.id}/unlock", {}),
            (f"/users/{target.id}/tokens", {"name": "t"}),
        ]:
            assert post(client, path, **data).status_code == 403, path
    assert admin.get("/users/").status_code == 200
    assert "target" in admin.get(f"/users/{target.id}").text


def test_an_admin_creates_a_user_who_can_log_in(
    app: Flask, boss: tuple[FlaskClient, User], dbs: Session
) -> None:
    client, me = boss
    response = post(client, "/users/", username=" newbie ", role="moderator", password=PASSWORD)
    assert response.status_code == 302
    user = dbs.scalar(select(User).where(User.username == "newbie"))
    dbs.commit()
    assert user is not None and user.role is Role.MODERATOR and user.active
    assert PASSWORD not in user.password_hash
    assert response.headers["Location"] == f"/users/{user.id}"
    [event] = events(dbs, "user.create")
    assert (event.user_id, event.username, event.target_id) == (me.id, "boss", str(user.id))
    assert event.after == {"username": "newbie", "role": "moderator", "active": True}
    assert login(app.test_client(), "newbie").status_code == 302
    assert "newbie" in client.get("/users/").text


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"username": "a", "role": "viewer", "password": "short"}, 400, "at least 8"),
        ({"username": "  ", "role": "viewer", "password": PASSWORD}, 400, "username is required"),
        ({"username": "a\x00b", "role": "viewer", "password": PASSWORD}, 400, "control"),
        ({"username": "a", "role": "root", "password": PASSWORD}, 400, "Unknown role"),
        ({"username": "boss", "role": "viewer", "password": PASSWORD}, 409, "already exists"),
    ],
)
def test_creating_a_user_refuses_bad_input(
    boss: tuple[FlaskClient, User], dbs: Session, data: dict[str, str], status: int, message: str
) -> None:
    response = post(boss[0], "/users/", **data)
    assert response.status_code == status and message in response.text
    assert [u.username for u in dbs.scalars(select(User))] == ["boss"]
    assert events(dbs, "user.create") == []


def test_a_role_change_is_audited_with_before_and_after(
    boss: tuple[FlaskClient, User], make_user: MakeUser, dbs: Session
) -> None:
    target = make_user("target", Role.VIEWER)
    assert post(boss[0], f"/users/{target.id}/role", role="moderator").status_code == 302
    assert reload(dbs, target).role is Role.MODERATOR
    [event] = events(dbs, "user.role")
    assert (event.before, event.after) == ({"role": "viewer"}, {"role": "moderator"})
    assert event.target_type == "user" and event.target_id == str(target.id)


def test_deactivation_ends_the_users_sessions_and_activation_restores_login(
    app: Flask, boss: tuple[FlaskClient, User], make_user: MakeUser, dbs: Session
) -> None:
    victim, target = logged_in(app, make_user, "target", Role.MODERATOR)
    assert victim.get("/users/me").status_code == 200
    # When an admin deactivates them
    assert post(boss[0], f"/users/{target.id}/deactivate").status_code == 302
    # Then their open session is dead, and they cannot log in again
    assert victim.get("/users/me").status_code == 302
    assert login(app.test_client(), "target").status_code == 401
    [event] = events(dbs, "user.deactivate")
    assert (event.before, event.after) == (
        {"active": True},
        {"active": False, "tokens_revoked": 0},
    )
    assert "deactivated" in boss[0].get(f"/users/{target.id}").text
    # When they are activated again, they can log in
    assert post(boss[0], f"/users/{target.id}/activate").status_code == 302
    assert login(app.test_client(), "target").status_code == 302
    [event] = events(dbs, "user.activate")
    assert (event.before, event.after) == ({"active": False}, {"active": True})


def test_deactivation_revokes_api_tokens_for_good(
    app: Flask, boss: tuple[FlaskClient, User], make_user: MakeUser, dbs: Session
) -> None:
    # Given a moderator with a working API token
    _, target = logged_in(app, make_user, "target", Role.MODERATOR)
    page = post(boss[0], f"/users/{target.id}/tokens", name="ci")
    token = re.search(r'<code id="token-value">([^<]+)</code>', page.text).group(1)  # type: ignore[union-attr]
    api = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/v1/models", headers=headers).status_code == 200
    # When an admin deactivates them, then activates them again
    assert post(boss[0], f"/users/{target.id}/deactivate").status_code == 302
    assert api.get("/api/v1/models", headers=headers).status_code == 401
    assert post(boss[0], f"/users/{target.id}/activate").status_code == 302
    # Then the old token stays revoked (a new one must be made), and that is audited
    assert api.get("/api/v1/models", headers=headers).status_code == 401
    dbs.expire_all()
    [row] = dbs.scalars(select(ApiToken).where(ApiToken.user_id == target.id))
    assert row.revoked_at is not None
    [event] = events(dbs, "user.deactivate")
    assert event.after == {"active": False, "tokens_revoked": 1}


def test_a_password_reset_ends_sessions_unlocks_and_never_audits_the_password(
    app: Flask, boss: tuple[FlaskClient, User], make_user: MakeUser, dbs: Session
) -> None:
    victim, target = logged_in(app, make_user, "target", Role.VIEWER)
    for _ in range(3):  # the test settings lock an account after 3 failures
        login(app.test_client(), "target", "wrong password")
    assert reload(dbs, target).locked_until is not None
    assert post(boss[0], f"/users/{target.id}/password", password="short").status_code == 400
    # When an admin sets a new password
    response = post(boss[0], f"/users/{target.id}/password", password=NEW_PASSWORD)
    assert response.status_code == 302
    # Then the old session is dead, the lock is gone, only the new password works
    assert victim.get("/users/me").status_code == 302
    assert login(app.test_client(), "target", PASSWORD).status_code == 401
    assert login(app.test_client(), "target", NEW_PASSWORD).status_code == 302
    [event] = events(dbs, "user.password_reset")
    assert event.before is not None and event.before["failed_logins"] == 3
    assert event.before["locked_until"] is not None
    assert event.after == {"failed_logins": 0, "locked_until": None, "sessions_revoked": True}
    dump = json.dumps([[e.before, e.after] for e in dbs.scalars(select(AuditEvent))])
    dbs.commit()
    assert NEW_PASSWORD not in dump and PASSWORD not in dump


def test_an_admin_unlocks_a_locked_account(
    app: Flask, boss: tuple[FlaskClient, User], make_user: MakeUser, dbs: Session
) -> None:
    target = make_user("target", Role.VIEWER)
    for _ in range(3):
        login(app.test_client(), "target", "wrong password")
    assert login(app.test_client(), "target").status_code == 401  # locked: as any failure
    assert "Unlock" in boss[0].get(f"/users/{target.id}").text
    assert post(boss[0], f"/users/{target.id}/unlock").status_code == 302
    assert login(app.test_client(), "target").status_code == 302
    [event] = events(dbs, "user.unlock")
    assert event.before is not None and event.before["failed_logins"] == 3
    assert event.after == {"failed_logins": 0, "locked_until": None}


def test_the_last_active_admin_can_be_neither_demoted_nor_deactivated(
    boss: tuple[FlaskClient, User], make_user: MakeUser, dbs: Session
) -> None:
    client, me = boss
    # Given another admin who is deactivated: boss is still the last *active* one
    other = make_user("other", Role.ADMIN)
    assert post(client, f"/users/{other.id}/deactivate").status_code == 302
    refused = [
        post(client, f"/users/{me.id}/deactivate"),
        post(client, f"/users/{me.id}/role", role="moderator"),
    ]
    assert [r.status_code for r in refused] == [409, 409]
    assert all("last active admin" in r.text for r in refused)
    me_now = reload(dbs, me)
    assert me_now.active and me_now.role is Role.ADMIN
    assert events(dbs, "user.role") == []
    # When the other admin is active again, boss may step down
    assert post(client, f"/users/{other.id}/activate").status_code == 302
    response = post(client, f"/users/{me.id}/role", role="moderator")
    assert response.status_code == 302 and response.headers["Location"] == "/users/me"
    assert client.get("/users/").status_code == 403


def test_the_blur_setting_persists_and_marks_the_page(viewer: FlaskClient, dbs: Session) -> None:
    assert 'class="blur-images"' in viewer.get("/users/me").text  # the default
    assert post(viewer, "/users/me/blur", blur_images="off").status_code == 302
    assert 'class="blur-images"' not in viewer.get("/users/me").text
    assert [u.blur_images for u in dbs.scalars(select(User))] == [False]
    dbs.commit()
    post(viewer, "/users/me/blur", blur_images="on")
    assert 'class="blur-images"' in viewer.get("/users/me").text


def test_changing_ones_password_keeps_this_session_and_ends_the_others(
    app: Flask, make_user: MakeUser, dbs: Session
) -> None:
    client, user = logged_in(app, make_user, "me", Role.VIEWER)
    other = app.test_client()
    login(other, "me")
    for data, message in [
        ({"current": "wrong", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD}, "wrong"),
        ({"current": PASSWORD, "password": "short", "confirm": "short"}, "at least 8"),
        ({"current": PASSWORD, "password": NEW_PASSWORD, "confirm": "different!"}, "differ"),
    ]:
        response = post(client, "/users/me/password", **data)
        assert response.status_code == 400 and message in response.text
    response = post(
        client, "/users/me/password", current=PASSWORD, password=NEW_PASSWORD, confirm=NEW_PASSWORD
    )
    assert response.status_code == 302
    assert client.get("/users/me").status_code == 200
    assert other.get("/users/me").status_code == 302
    assert login(app.test_client(), "me", PASSWORD).status_code == 401
    assert login(app.test_client(), "me", NEW_PASSWORD).status_code == 302
    [event] = events(dbs, "user.password_change")
    assert event.user_id == user.id


def test_a_token_is_shown_once_works_on_the_api_and_dies_when_revoked(
    app: Flask, make_user: MakeUser, dbs: Session
) -> None:
    client, user = logged_in(app, make_user, "reader", Role.VIEWER)
    page = post(client, "/users/me/tokens", name="my script")
    assert page.status_code == 200 and "not shown again" in page.text
    match = re.search(r'id="token-value">(ds_[A-Za-z0-9_-]+)<', page.text)
    assert match
    token = match.group(1)
    # Only the hash is stored, and the account page does not show the token again
    row = dbs.scalar(select(ApiToken).where(ApiToken.user_id == user.id))
    dbs.commit()
    assert row is not None and row.token_hash == hash_token(token) and row.name == "my script"
    listing = client.get("/users/me").text
    assert "my script" in listing and token not in listing
    bearer = {"Authorization": f"Bearer {token}"}
    api = app.test_client()
    assert api.get("/api/v1/images", headers=bearer).status_code == 200
    [created] = events(dbs, "token.create")
    assert created.user_id == user.id and token not in json.dumps(created.after)
    # When the user revokes it, the API refuses it
    assert post(client, f"/users/me/tokens/{row.id}/revoke").status_code == 302
    assert api.get("/api/v1/images", headers=bearer).status_code == 401
    [revoked] = events(dbs, "token.revoke")
    assert revoked.target_id == str(row.id) and revoked.before == {"revoked_at": None}


def test_an_admin_gives_a_token_and_nobody_else_can_revoke_it(
    app: Flask, boss: tuple[FlaskClient, User], make_user: MakeUser, dbs: Session
) -> None:
    snoop, _ = logged_in(app, make_user, "snoop", Role.MODERATOR)
    owner = make_user("owner", Role.VIEWER)
    page = post(boss[0], f"/users/{owner.id}/tokens", name="for owner")
    match = re.search(r'id="token-value">([^<]+)<', page.text)
    assert page.status_code == 200 and match and "owner" in page.text
    row = dbs.scalar(select(ApiToken))
    dbs.commit()
    assert row is not None and row.user_id == owner.id
    assert post(snoop, f"/users/me/tokens/{row.id}/revoke").status_code == 404
    headers = {"Authorization": f"Bearer {match.group(1)}"}
    assert app.test_client().get("/api/v1/models", headers=headers).status_code == 200
    assert post(boss[0], f"/users/{owner.id}/tokens/{row.id}/revoke").status_code == 302
    assert app.test_client().get("/api/v1/models", headers=headers).status_code == 401


def test_a_username_with_markup_is_rendered_escaped(
    app: Flask, boss: tuple[FlaskClient, User], dbs: Session
) -> None:
    assert (
        post(boss[0], "/users/", username=XSS, role="viewer", password=PASSWORD).status_code == 302
    )
    user = dbs.scalar(select(User).where(User.username == XSS))
    dbs.commit()
    assert user is not None
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for page in (boss[0].get("/users/").text, boss[0].get(f"/users/{user.id}").text):
        assert escaped in page and XSS not in page
    client = app.test_client()
    assert login(client, XSS).status_code == 302
    me = client.get("/users/me").text
    assert escaped in me and XSS not in me


def run_create_user(*argv: str) -> int:
    """``deepscreen create-user ...`` in this process (env from monkeypatch)."""
    parser = argparse.ArgumentParser()
    register_create_user(parser.add_subparsers())
    args = parser.parse_args(["create-user", *argv])
    return int(args.func(args))


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSCREEN_")}
    env["DEEPSCREEN_DATA_DIR"] = str(settings.data_dir)
    env["DEEPSCREEN_DATABASE_URL"] = settings.database_url
    for key, value in env.items():
        if key.startswith("DEEPSCREEN_"):
            monkeypatch.setenv(key, value)
    return env


def test_the_create_user_command_makes_a_user_who_can_log_in(
    app: Flask, cli_env: dict[str, str], dbs: Session
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepscreen.cli",
            "create-user",
            "root",
            "--role",
            "admin",
            "--password",
            PASSWORD,
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "created admin 'root'" in result.stdout
    client = app.test_client()
    assert login(client, "root").status_code == 302
    assert client.get("/users/").status_code == 200
    [event] = events(dbs, "user.create")
    assert (event.user_id, event.username) == (None, "cli")
    assert event.after == {"username": "root", "role": "admin", "active": True}


def test_the_create_user_command_refuses_and_updates(
    app: Flask, cli_env: dict[str, str], dbs: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_create_user("ann", "--role", "viewer", "--password", "short") == 2
    assert run_create_user("ann", "--password", PASSWORD) == 2  # no --role
    assert run_create_user("ann", "--role", "viewer", "--password", PASSWORD) == 0
    assert run_create_user("ann", "--role", "admin", "--password", PASSWORD) == 1  # exists
    assert run_create_user("nobody", "--update", "--password", PASSWORD) == 1
    # Given a password asked on the terminal: typed differently twice, then the same
    answers = iter(["first one!", "second one", NEW_PASSWORD, NEW_PASSWORD])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert run_create_user("ann", "--update") == 2
    assert run_create_user("ann", "--update", "--role", "moderator") == 0
    user = dbs.scalar(select(User).where(User.username == "ann"))
    dbs.commit()
    assert user is not None and user.role is Role.MODERATOR
    assert login(app.test_client(), "ann", PASSWORD).status_code == 401
    assert login(app.test_client(), "ann", NEW_PASSWORD).status_code == 302
    assert [e.after for e in events(dbs, "user.role")] == [{"role": "moderator"}]
    [reset] = events(dbs, "user.password_reset")
    assert reset.username == "cli" and reset.user_id is None


def test_the_create_user_command_keeps_the_last_admin(
    cli_env: dict[str, str], make_user: MakeUser
) -> None:
    make_user("only", Role.ADMIN)
    assert run_create_user("only", "--update", "--role", "viewer", "--password", PASSWORD) == 1
