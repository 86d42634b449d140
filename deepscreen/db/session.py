"""Engine and session factories, and the one transaction helper tasks use.

Whoever owns the process owns the session: a task wraps its work in
`session_scope(factory)`; query functions only ever receive a session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

#: How long SQLite waits for another connection's write lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    """An engine for ``settings.database_url``; no connection is opened yet.

    For a SQLite file the parent folder is created, and every connection gets
    WAL journaling, foreign keys and a busy timeout.
    """
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)

    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if not in_memory:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    _configure_sqlite(engine, wal=not in_memory)
    return engine


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin
        # (the module's implicit BEGIN breaks SAVEPOINT and rollback-only sessions).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front, so a transaction that reads and
        # then writes waits (busy_timeout) for another writer instead of failing
        # with SQLITE_BUSY once its snapshot is stale. Readers outside a
        # transaction are never blocked in WAL mode.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error, always close.

    A lost connection, refused connection or lock timeout becomes
    `DatabaseUnavailable` (a TransientError) so callers can retry it.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as err:
        session.rollback()
        raise DatabaseUnavailable(f"database unavailable: {_describe(err)}") from err
    except exc.DBAPIError as err:
        session.rollback()
        if err.connection_invalidated:
            raise DatabaseUnavailable(f"database connection lost: {_describe(err)}") from err
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _describe(err: Exception) -> str:
    orig = getattr(err, "orig", None)
    text = str(orig if orig is not None else err).strip()
    return text.splitlines()[0] if text else type(err).__name__
