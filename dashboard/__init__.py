"""The moderator dashboard: a Flask app factory, blueprints and templates.

`create_app(settings=None)` builds the app (nothing happens at import). It reads the
same database as the workers and starts work only by sending Celery task *names*,
so it never imports LiteRT or TensorFlow. Served by gunicorn (`deepscreen dashboard`).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter, Map

from deepscreen.config import Settings

#: Where an empty ``DEEPSCREEN_SECRET_KEY`` is replaced by a generated one.
SECRET_KEY_FILE = "secret_key"


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """The dashboard for ``settings`` (default: from the environment).

    ``overrides`` go into ``app.config`` last (tests use them, e.g. ``TESTING=True``).
    """
    from dashboard import (
        api,
        api_submit,
        api_webhooks,
        audit,
        auth,
        db,
        events,
        model_lifecycle,
        models_page,
        ops,
        retraining,
        review,
        stats,
        unfinished,
        users,
        webhooks,
    )

    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key or _stored_secret_key(settings.data_dir),
        SESSION_COOKIE_NAME="deepscreen_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=1024 * 1024,  # forms only: nothing large is ever posted
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.config.update(overrides)
    app.extensions["deepscreen.settings"] = settings

    # Before any rule is added: rules pick their converter when they are compiled.
    app.url_map.converters["int"] = IdConverter
    db.init_app(app, settings)
    auth.init_app(app)
    for blueprint in (
        auth.bp,
        review.bp,
        unfinished.bp,
        audit.bp,
        users.bp,
        stats.bp,
        models_page.bp,
        model_lifecycle.bp,
        retraining.bp,
        api.bp,
        api_submit.bp,
        api_webhooks.bp,
        webhooks.bp,
        ops.bp,
        events.bp,
    ):
        app.register_blueprint(blueprint)
    ops.init_app(app)
    app.register_error_handler(HTTPException, _error_page)
    return app


class IdConverter(IntegerConverter):
    """``<int:...>`` in every route: a database id, so larger than a signed 64-bit
    integer it matches nothing (404) instead of overflowing the database driver."""

    def __init__(
        self,
        map: Map,
        fixed_digits: int = 0,
        min: int | None = None,
        max: int | None = None,
        signed: bool = False,
    ) -> None:
        super().__init__(map, fixed_digits, min, 2**63 - 1 if max is None else max, signed)


def _error_page(exc: HTTPException) -> Any:
    """JSON for the API and JSON clients, a page for browsers."""
    code = exc.code or 500
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    if request.path.startswith("/api/") or best == "application/json":
        return jsonify(error=exc.description or exc.name), code
    return render_template(
        "error.html", code=code, name=exc.name, description=exc.description
    ), code


def _stored_secret_key(data_dir: Path) -> str:
    """A random key made once and kept (mode 0600) under the data folder, so sessions
    survive a restart and every gunicorn worker signs with the same key."""
    path = data_dir / SECRET_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        try:
            fd = path.open("x", encoding="ascii")
        except FileExistsError:  # another worker made it first
            return path.read_text(encoding="ascii").strip()
        with fd:
            path.chmod(0o600)
            fd.write(key)
        return key
    return path.read_text(encoding="ascii").strip()
