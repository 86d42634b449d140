"""Accounts: login, logout, who the current user is, and what their role allows.

The session cookie (signed, HttpOnly, Secure, SameSite=Lax) holds the user id and
the user's ``session_token``; logout and password changes rotate the token in the
database, so every cookie issued before is refused on the server side. Repeated
failed logins lock the account for ``login_lockout_seconds``, doubling with each
further failure, and are logged and audited.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import select
from werkzeug.wrappers import Response

from dashboard import db, security
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import Role, User

logger = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

#: The one answer to every failed login: wrong name, wrong password or a locked account.
LOGIN_FAILED = (
    "Wrong username or password. After repeated failures an account is locked for a while."
)

#: Longest username (the column's length).
MAX_USERNAME = 64

#: Each role can do what the roles after it can.
RANK = {Role.VIEWER: 0, Role.MODERATOR: 1, Role.ADMIN: 2}

F = TypeVar("F", bound=Callable[..., Any])


def init_app(app: Flask) -> None:
    security.init_app(app)
    app.before_request(load_user)
    app.context_processor(lambda: {"current_user": g.get("user"), "can": can})


def load_user() -> None:
    """Set ``g.user`` from the session cookie, if it still names a live session."""
    g.user = None
    user_id, token = session.get("uid"), session.get("sid")
    if user_id is None or token is None:
        return
    user = db.session().get(User, user_id)
    if user is None or not user.active or not secrets.compare_digest(user.session_token, token):
        session.pop("uid", None)
        session.pop("sid", None)
        return
    g.user = user


def can(role: Role, user: User | None = None) -> bool:
    """Whether ``user`` (default: the current one) has at least ``role``."""
    user = user if user is not None else g.get("user")
    return user is not None and RANK[user.role] >= RANK[role]


def login_required(role: Role = Role.VIEWER) -> Callable[[F], F]:
    """Refuse the view to anonymous users (login redirect, or 401 for JSON) and to
    users below ``role`` (403)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if g.get("user") is None:
                if _wants_json():
                    return jsonify(error="login required"), 401
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not can(role):
                abort(403, description=f"this needs the {role.value} role")
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return request.path.startswith("/api/") or best == "application/json"


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if not target:
        return url_for("review.queue")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("review.queue")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("auth/login.html", next=request.args.get("next", ""))
    settings = db.settings()
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    dbs = db.session()
    # A name no account can have (too long, NUL) is not looked up: PostgreSQL refuses NUL.
    known = username and len(username) <= MAX_USERNAME and "\x00" not in username
    user = dbs.scalar(select(User).where(User.username == username)) if known else None
    now = utcnow()
    from dashboard import audit

    if user is not None and user.locked_until is not None and user.locked_until > now:
        wait = int((user.locked_until - now).total_seconds()) + 1
        logger.warning("login refused: account %r locked for %d s", username, wait)
        security.verify_password(None, password)  # the same work as any failed login
        audit.record("login.locked", username=username, target_type="user", target_id=user.id)
        dbs.commit()
        # The answer of an unknown name: a locked account must not tell that it exists.
        return _login_failed(LOGIN_FAILED, 401)
    if user is not None and user.active and security.verify_password(user.password_hash, password):
        user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
        audit.record("login.ok", user=user, target_type="user", target_id=user.id)
        dbs.commit()
        session.clear()
        session.permanent = True
        session["uid"], session["sid"] = user.id, user.session_token
        security.csrf_token()  # a fresh token for the new session
        logger.info("login: %s", username)
        return redirect(_safe_next(request.form.get("next")))
    if user is not None:
        if not user.active:
            security.verify_password(None, password)  # the same work as for a live account
        user.failed_logins += 1
        over = user.failed_logins - settings.login_max_failures
        if over >= 0:
            lock = settings.login_lockout_seconds * 2 ** min(over, 10)
            user.locked_until = now + timedelta(seconds=lock)
            logger.warning("login: account %r locked for %d s", username, lock)
    else:
        security.verify_password(None, password)  # the same work as for a real account
    logger.warning("login failed for %r from %s", username, request.remote_addr)
    audit.record(
        "login.failed",
        username=username[:MAX_USERNAME].replace("\x00", "\ufffd") or None,
        target_type="user",
        target_id=user.id if user else None,
        after={"failed_logins": user.failed_logins} if user else None,
    )
    dbs.commit()
    return _login_failed(LOGIN_FAILED, 401)


def _login_failed(message: str, status: int) -> tuple[str, int]:
    flash(message, "error")
    return render_template("auth/login.html", next=request.form.get("next", "")), status


@bp.post("/logout")
@login_required()
def logout() -> Response:
    user: User = g.user
    rotate_session_token(user)
    from dashboard import audit

    audit.record("logout", target_type="user", target_id=user.id)
    db.session().commit()
    session.clear()
    return redirect(url_for("auth.login"))


def rotate_session_token(user: User) -> None:
    """Invalidate every session of ``user`` (logout, password change, deactivation)."""
    user.session_token = secrets.token_urlsafe(32)


def new_user(username: str, role: Role, password: str) -> User:
    """A `User` row (not added to any session) with a hashed password."""
    return User(
        username=username,
        role=role,
        password_hash=security.hash_password(password),
        session_token=secrets.token_urlsafe(32),
        created_at=utcnow(),
    )
