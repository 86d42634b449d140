"""Fixtures for end-to-end runs: generated images, a Redis database of the run's own,
and ``deepscreen`` subprocesses that are always stopped (helpers: pipeline_helpers.py)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pipeline_helpers import CORRUPT_FILES, Process, image_bytes

#: Key that marks a Redis database as taken by a test run.
REDIS_CLAIM_KEY = "deepscreen-test:claimed-by"


@pytest.fixture(scope="session")
def generated_images() -> Callable[[int], dict[str, bytes]]:
    """``generated_images(n)``: n JPEGs and PNGs plus the corrupt files, by file name."""

    def make(count: int) -> dict[str, bytes]:
        files = {
            f"img{i:03d}.{'jpg' if i % 2 else 'png'}": image_bytes(i, "JPEG" if i % 2 else "PNG")
            for i in range(count)
        }
        files.update(CORRUPT_FILES)
        return files

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
