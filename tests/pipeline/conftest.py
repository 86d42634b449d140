"""Fixtures for end-to-end runs: sample images, a Redis database of the run's own, the
production stack (SeaweedFS, PostgreSQL, Redis) as settings and a subprocess
environment, a Redis server a test may stop, and ``deepscreen`` subprocesses that are
always stopped (helpers: pipeline_helpers.py)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from model_variants import whole_image_model
from pipeline_helpers import Process, clean_env
from sample_images import CORRUPT_FILES, generated_images, shared_images
from services import free_port, unavailable
from sqlalchemy import Engine

from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.session import make_engine
from deepscreen.storage import S3Store, make_s3_client

#: Key that marks a Redis database as taken by a test run.
REDIS_CLAIM_KEY = "deepscreen-test:claimed-by"


@pytest.fixture(scope="session")
def sample_images() -> Callable[[int], dict[str, bytes]]:
    """``sample_images(n)``: n images plus the 3 corrupt files, by file name. The images
    are real faces from ../shared/data when it is there, generated ones otherwise."""

    def make(count: int) -> dict[str, bytes]:
        files = shared_images(count) or generated_images(count)
        assert len(files) == count
        return {**files, **CORRUPT_FILES}

    return make


@pytest.fixture
def redis_broker_url(redis_url: str) -> Iterator[str]:
    """A Redis database (1-15) no other test run is using, emptied before and after.

    Claimed with SET NX on a marker key, so parallel runs pick different databases
    and never see each other's queues.
    """
    import redis

    token = secrets.token_hex(8)
    parts = urlsplit(redis_url)
    for db in range(1, 16):
        url = urlunsplit(parts._replace(path=f"/{db}"))
        client = redis.Redis.from_url(url)
        if client.set(REDIS_CLAIM_KEY, token, nx=True, ex=3600):
            break
        client.close()
    else:
        pytest.fail("no free Redis database (1-15) for this test run")
    try:
        client.flushdb()
        client.set(REDIS_CLAIM_KEY, token, ex=3600)
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """``start_process(args, env)``; every process is stopped at teardown."""
    started: list[Process] = []

    def start(args: list[str], env: dict[str, str]) -> Process:
        process = Process(args, env, tmp_path / f"process-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(timeout=30)


@pytest.fixture(scope="session")
def whole_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged model as a whole-image classifier: the generated images these tests
    put through the pipeline have no faces (the face stage's path: test_worker_faces,
    test_pipeline_embedded)."""
    return whole_image_model(tmp_path_factory.mktemp("whole-model"))


@pytest.fixture
def stack_settings(
    seaweedfs,  # type: ignore[no-untyped-def]
    make_postgres_database: Callable[[], str],
    redis_broker_url: str,
    tmp_path: Path,
    whole_model_dir: Path,
) -> Settings:
    """S3 on SeaweedFS, a fresh migrated PostgreSQL database, this run's Redis database,
    the whole-image model."""
    settings = seaweedfs.settings(
        data_dir=tmp_path / "data",
        database_url=make_postgres_database(),
        broker_url=redis_broker_url,
        s3_max_attempts=3,
        inference_threads=1,
        model_dir=whole_model_dir,
    )
    migrate.upgrade(settings)
    return settings


@pytest.fixture
def stack_env(stack_settings: Settings) -> dict[str, str]:
    """The environment of a ``deepscreen`` subprocess on ``stack_settings``."""
    s = stack_settings
    return clean_env(
        data_dir=s.data_dir,
        database_url=s.database_url,
        broker_url=s.broker_url,
        s3_endpoint_url=s.s3_endpoint_url,
        s3_region=s.s3_region,
        s3_access_key_id=s.s3_access_key_id,
        s3_secret_access_key=s.s3_secret_access_key,
        inference_threads=1,
        worker_concurrency=1,
        model_dir=s.model_dir,
    )


@pytest.fixture
def stack_engine(stack_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(stack_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def fill_bucket(
    stack_settings: Settings, sample_images: Callable[[int], dict[str, bytes]]
) -> Callable[[int], str]:
    """``fill_bucket(n)``: a new bucket with n images and the 3 corrupt files under
    ``incoming/``, and a text file; returns its name."""

    def fill(count: int) -> str:
        name = f"e2e-{secrets.token_hex(6)}"
        client = make_s3_client(stack_settings)
        client.create_bucket(Bucket=name)
        store = S3Store(name, client)
        for key, data in sample_images(count).items():
            store.put(f"incoming/{key}", data)
        store.put("incoming/readme.txt", b"not an image")
        return name

    return fill


class RedisServer:
    """A ``redis-server`` of the test's own on a free port, keeping nothing on disk,
    which the test may stop and start again (the shared server must not be stopped)."""

    def __init__(self, binary: str, port: int, log: Path) -> None:
        self.binary, self.port, self.log = binary, port, log
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
                + ["--save", "", "--appendonly", "no"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    pytest.fail(f"redis-server did not start: {self.log.read_text()}")
                time.sleep(0.1)
            finally:
                client.close()

    def stop(self) -> None:
        """Stop the server; what it held (queued messages) is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def kill(self) -> None:
        """SIGKILL the server: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def redis_server(redis_url: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A running `RedisServer`, stopped at teardown."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    server = RedisServer(binary, free_port(), tmp_path / "redis.log")
    server.start()
    yield server
    server.stop()
