"""Engine and session factories: SQLite pragmas, transactions, error translation."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, text

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.models import Image, ImageSource
from deepscreen.db.session import (
    SQLITE_BUSY_TIMEOUT_MS,
    make_engine,
    make_session_factory,
    session_scope,
)
from deepscreen.errors import DatabaseUnavailable, TransientError
from deepscreen.storage import ObjectInfo


def listed(bucket: str, key: str, etag: str, size: int | None = 1) -> ObjectInfo:
    """A listed object, as ingestion hands it to register_images."""
    return ObjectInfo(bucket, key, etag, size, datetime.now(UTC))  # type: ignore[arg-type]


def test_sqlite_connections_get_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path / "fresh"))
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
        assert (tmp_path / "fresh" / "deepscreen.sqlite3").is_file()
    finally:
        engine.dispose()


def test_in_memory_sqlite_works(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path, database_url="sqlite://"))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    assert not (tmp_path / "deepscreen.sqlite3").exists()


def test_session_scope_commits(db_settings: Settings, bucket: str) -> None:
    engine = make_engine(db_settings)
    factory = make_session_factory(engine)
    try:
        # Given images registered in one transaction
        with session_scope(factory) as session:
            ids = queries.register_images(
                session=session, objects=[listed(bucket, "a.jpg", "e")], source=ImageSource.SCAN
            )
        # Then another transaction sees them, and registering again adds nothing
        with session_scope(factory) as session:
            assert [i.key for i in queries.get_images(session=session, ids=ids)] == ["a.jpg"]
            again = queries.register_images(
                session=session, objects=[listed(bucket, "a.jpg", "e")], source=ImageSource.SCAN
            )
            assert again == []
    finally:
        engine.dispose()


def test_session_scope_rolls_back_on_error(db_settings: Settings, bucket: str) -> None:
    engine = make_engine(db_settings)
    factory = make_session_factory(engine)
    try:
        with pytest.raises(RuntimeError), session_scope(factory) as session:
            queries.register_images(
                session=session, objects=[listed(bucket, "a.jpg", "e")], source=ImageSource.SCAN
            )
            raise RuntimeError("task failed half-way")
        with session_scope(factory) as session:
            assert session.scalars(select(Image).where(Image.bucket == bucket)).all() == []
    finally:
        engine.dispose()


def test_unreachable_database_is_transient(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/none?connect_timeout=2",
    )
    engine = make_engine(settings)
    try:
        with (
            pytest.raises(DatabaseUnavailable) as info,
            session_scope(make_session_factory(engine)) as session,
        ):
            session.execute(text("SELECT 1"))
        assert isinstance(info.value, TransientError)
    finally:
        engine.dispose()
