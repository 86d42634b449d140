"""Accounts in the dashboard: admins manage users, everyone manages themself.

Admins (``/users/``) list, create, re-role, deactivate, reactivate, unlock and reset
the password of any user, and give anyone an API token; every change is audited with
the state before and after, and the last active admin can be neither demoted nor
deactivated. Deactivating a user or resetting a password rotates the user's session
token, so their open sessions end at once. On ``/users/me`` anyone logged in changes
their password, the "blur images" setting and their own API tokens.

A token is shown once, on the page answering its creation; only its SHA-256 is
stored, and neither the token nor a password ever reaches a log or the audit log.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.wrappers import Response

from dashboard import audit, db, security, tokens
from dashboard.accounts import (
    MIN_PASSWORD_LENGTH,
    AccountError,
    check_password,
    check_username,
    is_last_active_admin,
    lock_state,
    parse_role,
    unlock,
)
from dashboard.auth import can, login_required, new_user, rotate_session_token
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import Role, User

bp = Blueprint("users", __name__, url_prefix="/users")

View = str | Response | tuple[str, int]


@bp.get("/")
@login_required(Role.ADMIN)
def index() -> str:
    """Every user, with a form to create one."""
    users = db.session().scalars(select(User).order_by(User.username))
    return render_template("users/index.html", users=list(users), roles=list(Role), now=utcnow())


@bp.post("/")
@login_required(Role.ADMIN)
def create() -> View:
    form = request.form
    dbs = db.session()
    try:
        username = check_username(form.get("username", ""))
        role = parse_role(form.get("role"))
        password = check_password(form.get("password", ""))
    except AccountError as exc:
        return _refused(str(exc))
    if dbs.scalar(select(User.id).where(User.username == username)) is not None:
        return _refused(f"User {username} already exists.", status=409)
    user = new_user(username, role, password)
    dbs.add(user)
    try:
        dbs.flush()
    except IntegrityError:  # created concurrently by another admin
        dbs.rollback()
        return _refused(f"User {username} already exists.", status=409)
    audit.record(
        "user.create",
        target_type="user",
        target_id=user.id,
        after={"username": username, "role": role.value, "active": True},
    )
    dbs.commit()
    flash(f"Created {role.value} {username}.", "ok")
    return redirect(url_for(".detail", user_id=user.id))


@bp.get("/<int:user_id>")
@login_required(Role.ADMIN)
def detail(user_id: int) -> str:
    return _detail_page(_user(user_id))


@bp.post("/<int:user_id>/role")
@login_required(Role.ADMIN)
def set_role(user_id: int) -> View:
    user = _user(user_id)
    try:
        role = parse_role(request.form.get("role"))
    except AccountError as exc:
        return _refused(str(exc), user)
    if role is user.role:
        return redirect(url_for(".detail", user_id=user.id))
    if role is not Role.ADMIN and is_last_active_admin(user, session=db.session()):
        return _refused(
            f"{user.username} is the last active admin: promote someone first.", user, 409
        )
    audit.record(
        "user.role",
        target_type="user",
        target_id=user.id,
        before={"role": user.role.value},
        after={"role": role.value},
    )
    user.role = role
    db.session().commit()
    flash(f"{user.username} is now a {role.value}.", "ok")
    if not can(Role.ADMIN):  # they demoted themself
        return redirect(url_for(".me"))
    return redirect(url_for(".detail", user_id=user.id))


@bp.post("/<int:user_id>/deactivate")
@login_required(Role.ADMIN)
def deactivate(user_id: int) -> View:
    user = _user(user_id)
    if is_last_active_admin(user, session=db.session()):
        return _refused(f"{user.username} is the last active admin.", user, 409)
    return _set_active(user, False)


@bp.post("/<int:user_id>/activate")
@login_required(Role.ADMIN)
def activate(user_id: int) -> View:
    return _set_active(_user(user_id), True)


def _set_active(user: User, active: bool) -> Response:
    if user.active is not active:
        after: dict[str, Any] = {"active": active}
        if not active:
            rotate_session_token(user)  # their open sessions end now
            # ... and their API tokens for good: activating again must not revive them
            after["tokens_revoked"] = tokens.revoke_all(user)
        audit.record(
            "user.activate" if active else "user.deactivate",
            target_type="user",
            target_id=user.id,
            before={"active": user.active},
            after=after,
        )
        user.active = active
        db.session().commit()
    flash(f"{user.username} is {'active' if active else 'deactivated'}.", "ok")
    if not active and user.id == g.user.id:
        session.clear()
        return redirect(url_for("auth.login"))
    return redirect(url_for(".detail", user_id=user.id))


@bp.post("/<int:user_id>/password")
@login_required(Role.ADMIN)
def reset_password(user_id: int) -> View:
    """Set a new password (told to the user out of band), end their sessions, unlock."""
    user = _user(user_id)
    try:
        password = check_password(request.form.get("password", ""))
    except AccountError as exc:
        return _refused(str(exc), user)
    before = lock_state(user)
    _set_password(user, password)
    unlock(user)
    audit.record(
        "user.password_reset",
        target_type="user",
        target_id=user.id,
        before=before,
        after={**lock_state(user), "sessions_revoked": True},
    )
    db.session().commit()
    if user.id == g.user.id:
        session["sid"] = user.session_token  # an admin resetting their own stays logged in
    flash(f"New password set for {user.username}; their sessions have ended.", "ok")
    return redirect(url_for(".detail", user_id=user.id))


@bp.post("/<int:user_id>/unlock")
@login_required(Role.ADMIN)
def unlock_user(user_id: int) -> Response:
    user = _user(user_id)
    before = lock_state(user)
    unlock(user)
    audit.record(
        "user.unlock", target_type="user", target_id=user.id, before=before, after=lock_state(user)
    )
    db.session().commit()
    flash(f"{user.username} can log in again.", "ok")
    return redirect(url_for(".detail", user_id=user.id))


@bp.post("/<int:user_id>/tokens")
@login_required(Role.ADMIN)
def create_token_for(user_id: int) -> View:
    user = _user(user_id)
    return tokens.issue(user, url_for(".detail", user_id=user.id))


@bp.post("/<int:user_id>/tokens/<int:token_id>/revoke")
@login_required(Role.ADMIN)
def revoke_token_of(user_id: int, token_id: int) -> Response:
    tokens.revoke(tokens.owned(token_id, _user(user_id)))
    return redirect(url_for(".detail", user_id=user_id))


@bp.get("/me")
@login_required()
def me() -> str:
    return render_template("users/me.html", tokens=tokens.of_user(g.user))


@bp.post("/me/password")
@login_required()
def change_password() -> View:
    """A new password for oneself: every other session ends, this one stays."""
    user: User = g.user
    form = request.form
    if not security.verify_password(user.password_hash, form.get("current", "")):
        return _refused_me("The current password is wrong.")
    try:
        password = check_password(form.get("password", ""))
    except AccountError as exc:
        return _refused_me(str(exc))
    if form.get("confirm", "") != password:
        return _refused_me("The new passwords differ.")
    _set_password(user, password)
    audit.record(
        "user.password_change",
        target_type="user",
        target_id=user.id,
        after={"sessions_revoked": True},
    )
    db.session().commit()
    session["sid"] = user.session_token  # log this browser in again on the new token
    flash("Password changed; your other sessions have ended.", "ok")
    return redirect(url_for(".me"))


@bp.post("/me/blur")
@login_required()
def set_blur() -> Response:
    user: User = g.user
    user.blur_images = request.form.get("blur_images") == "on"
    db.session().commit()
    return redirect(url_for(".me"))


@bp.post("/me/tokens")
@login_required()
def create_token() -> View:
    return tokens.issue(g.user, url_for(".me"))


@bp.post("/me/tokens/<int:token_id>/revoke")
@login_required()
def revoke_token(token_id: int) -> Response:
    tokens.revoke(tokens.owned(token_id, g.user))
    return redirect(url_for(".me"))


def _user(user_id: int) -> User:
    user = db.session().get(User, user_id) if user_id < 2**63 else None
    if user is None:
        abort(404, description=f"no user {user_id}")
    return user


def _set_password(user: User, password: str) -> None:
    user.password_hash = security.hash_password(password)
    rotate_session_token(user)


def _detail_page(user: User) -> str:
    return render_template(
        "users/detail.html", user=user, roles=list(Role), tokens=tokens.of_user(user), now=utcnow()
    )


def _refused(message: str, user: User | None = None, status: int = 400) -> tuple[str, int]:
    """The page the form came from, with the reason, and nothing changed."""
    flash(message, "error")
    if user is None:
        return index(), status
    return _detail_page(user), status


def _refused_me(message: str) -> tuple[str, int]:
    flash(message, "error")
    return me(), 400


@bp.context_processor
def _template_values() -> dict[str, Any]:
    return {"min_password_length": MIN_PASSWORD_LENGTH}
