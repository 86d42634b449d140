"""Shared fixtures: real PostgreSQL, Redis and SeaweedFS (S3), and databases on both backends.

A service that cannot be reached skips the tests that need it, with the reason,
on a developer's machine; under CI (``CI=true``) it fails them instead, so a
green CI run really ran them.

Fixtures compose: settings -> engine -> session. ``database_url`` is
parametrized over SQLite and PostgreSQL and migrated to head once per test
session; ``db_session`` gives each test a transaction that is rolled back.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from services import unavailable
from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from deepscreen.config import Settings
from deepscreen.seaweedfs import LocalSeaweedFS, SeaweedFSUnavailable

#: Maintenance database of the test PostgreSQL server (trust auth on loopback here).
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres_admin_engine() -> Iterator[Engine]:
    engine = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except exc.DBAPIError as err:
        engine.dispose()
        unavailable(f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {err.orig or err}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def make_postgres_database(postgres_admin_engine: Engine) -> Iterator[Callable[[], str]]:
    """Factory of fresh, empty ``deepscreen_test_<random>`` databases; all dropped at the end."""
    created: list[str] = []

    def make() -> str:
        name = f"deepscreen_test_{secrets.token_hex(6)}"
        with postgres_admin_engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    yield make
    with postgres_admin_engine.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url(make_postgres_database: Callable[[], str]) -> str:
    """One fresh, empty PostgreSQL database for this test session."""
    return make_postgres_database()


# ----------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        unavailable(f"Redis unreachable at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


# ------------------------------------------------------------ databases, both


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database migrated to head, once per backend per test session."""
    from db_fixtures import migrated_database

    return migrated_database(request, tmp_path_factory)


@pytest.fixture
def db_settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture(scope="session")
def db_engine(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    from deepscreen.db.session import make_engine

    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), database_url=database_url)
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A session inside an outer transaction that is rolled back after the test;
    the code under test may commit (it commits a savepoint)."""
    with db_engine.connect() as conn:
        outer = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


# ------------------------------------------------------------- SeaweedFS / S3


@dataclass(frozen=True)
class S3Service:
    """A running S3 endpoint and the credentials it accepts."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    pid: int
    startup_seconds: float

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
            "s3_max_attempts": 1,
            "s3_connect_timeout": 2.0,
            "s3_read_timeout": 10.0,
        }
        values.update(overrides)
        return Settings(**values)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """SeaweedFS (``weed mini``) on free loopback ports, with S3 credentials.

    Started once per test session, stopped by PID at the end (terminate, then kill).
    """
    try:
        server = LocalSeaweedFS.start(tmp_path_factory.mktemp("seaweedfs"))
    except SeaweedFSUnavailable as exc:
        unavailable(str(exc))
    with server:
        yield S3Service(
            endpoint_url=server.endpoint_url,
            access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key,
            region=server.region,
            pid=server.pid,
            startup_seconds=server.startup_seconds,
        )
