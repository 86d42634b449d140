"""Passwords, CSRF tokens and response headers.

Passwords are hashed with Werkzeug's default KDF (scrypt). Every state-changing
request (POST, PUT, PATCH, DELETE) from a browser carries the session's CSRF token
in a ``csrf_token`` form field or an ``X-CSRF-Token`` header. Two kinds of request
need none, as a forged cross-site request can be neither: an API call that carries no
session cookie (only its ``Authorization: Bearer`` token can authenticate it, and a
browser never adds that header cross-site; without a token it is answered 401), and
the endpoints in `CSRF_EXEMPT`, which authenticate every request by a secret of their
own (machine-to-machine, such as bucket notifications).
"""

from __future__ import annotations

import hmac
import secrets

from flask import Flask, Response, abort, current_app, request, session
from markupsafe import Markup, escape
from werkzeug.security import check_password_hash, generate_password_hash

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
#: Requests without the session cookie are exempt only below this path (the API's).
API_PATH = "/api/"
#: Endpoints machines call with a shared secret and no cookie (dashboard/events.py): a
#: request that carries no cookie grants nothing a forged one could abuse.
CSRF_EXEMPT = frozenset({"events.s3", "events.seaweedfs"})

#: Compared against when the username is unknown, so the reply takes as long.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))

#: Everything the app serves comes from itself: no CDN, no inline script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    return check_password_hash(password_hash or _DUMMY_HASH, password) and bool(password_hash)


def csrf_token() -> str:
    """This session's CSRF token (made on first use)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def csrf_field() -> Markup:
    """``<input type=hidden>`` with the token, for forms in templates."""
    return Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf_token())}">')


def is_cookieless_api_call() -> bool:
    """An API request without the session cookie: a bearer token, or nothing, is all
    that can authenticate it."""
    return (
        request.path.startswith(API_PATH)
        and current_app.config["SESSION_COOKIE_NAME"] not in request.cookies
    )


def check_csrf() -> None:
    """Refuse (400) an unsafe request without the session's token, unless it is an API
    call without the session cookie or goes to an endpoint in `CSRF_EXEMPT`."""
    if request.method not in UNSAFE_METHODS:
        return
    if request.endpoint in CSRF_EXEMPT or is_cookieless_api_call():
        return
    expected = session.get("csrf")
    # The header first: reading the form parses (and size-checks) the whole body.
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not expected or not sent or not hmac.compare_digest(str(expected), sent):
        abort(400, description="missing or invalid CSRF token; reload the page and try again")


def set_security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        # Pages show moderation data: never kept by shared caches or the back button.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def init_app(app: Flask) -> None:
    app.before_request(check_csrf)
    app.after_request(set_security_headers)
    app.jinja_env.globals.update(csrf_field=csrf_field, csrf_token=csrf_token)
