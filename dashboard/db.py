"""One engine per app, one session per request (``g``), closed at teardown.

Views call `session()`; a view that changes data commits it itself, so nothing is
written unless the whole change went through.
"""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.db.session import make_engine, make_session_factory


def init_app(app: Flask, settings: Settings) -> None:
    engine = make_engine(settings)
    app.extensions["deepscreen.engine"] = engine
    app.extensions["deepscreen.session_factory"] = make_session_factory(engine)
    app.teardown_appcontext(_close)


def settings() -> Settings:
    return current_app.extensions["deepscreen.settings"]  # type: ignore[no-any-return]


def session() -> Session:
    """This request's session (opened on first use)."""
    if "db_session" not in g:
        factory: sessionmaker[Session] = current_app.extensions["deepscreen.session_factory"]
        g.db_session = factory()
    return g.db_session  # type: ignore[no-any-return]


def _close(exc: BaseException | None) -> None:
    db_session: Session | None = g.pop("db_session", None)
    if db_session is not None:
        if exc is not None:
            db_session.rollback()
        db_session.close()
