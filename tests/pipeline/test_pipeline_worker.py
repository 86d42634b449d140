"""The production shape end to end: SeaweedFS (S3) -> `deepscreen ingest` -> Redis ->
a real `deepscreen worker` subprocess (prefork) -> PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from pipeline_helpers import Process, clean_env, deepscreen, wait_for
from sqlalchemy import Engine, func, select

from deepscreen.config import Settings
from deepscreen.db import migrate, queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus, ModelVersion, Prediction
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.storage import ObjectInfo, S3Store, make_s3_client
from deepscreen.taskqueue import CLASSIFY_QUEUE

Images = Callable[[int], dict[str, bytes]]

#: Seconds a worker gets to start, load the model and classify the run.
DEADLINE = 300


@pytest.fixture
def settings(
    seaweedfs,  # type: ignore[no-untyped-def]
    make_postgres_database: Callable[[], str],
    redis_broker_url: str,
    tmp_path: Path,
) -> Settings:
    """S3 on SeaweedFS, a fresh migrated PostgreSQL database, this run's Redis database."""
    settings = seaweedfs.settings(
        data_dir=tmp_path / "data",
        database_url=make_postgres_database(),
        broker_url=redis_broker_url,
        s3_max_attempts=3,
        inference_threads=1,
    )
    migrate.upgrade(settings)
    return settings


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return clean_env(
        data_dir=settings.data_dir,
        database_url=settings.database_url,
        broker_url=settings.broker_url,
        s3_endpoint_url=settings.s3_endpoint_url,
        s3_region=settings.s3_region,
        s3_access_key_id=settings.s3_access_key_id,
        s3_secret_access_key=settings.s3_secret_access_key,
        inference_threads=1,
        worker_concurrency=1,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    yield engine
    engine.dispose()


@pytest.fixture
def bucket(settings: Settings, generated_images: Images) -> str:
    """A bucket with 20 images and 2 corrupt files under ``incoming/``, and a text file."""
    name = f"e2e-{secrets.token_hex(6)}"
    client = make_s3_client(settings)
    client.create_bucket(Bucket=name)
    store = S3Store(name, client)
    for key, data in generated_images(20).items():
        store.put(f"incoming/{key}", data)
    store.put("incoming/readme.txt", b"not an image")
    return name


def pending(engine: Engine, bucket: str) -> int:
    with session_scope(make_session_factory(engine)) as session:
        counts = queries.count_images_by_status(session=session, buckets=[bucket])
    return counts[ImageStatus.QUEUED] + counts[ImageStatus.PROCESSING]


def test_a_worker_gives_every_image_in_a_bucket_a_verdict_exactly_once(
    settings: Settings,
    env: dict[str, str],
    engine: Engine,
    bucket: str,
    start_process: Callable[..., Process],
    tmp_path: Path,
) -> None:
    # Given a worker subprocess on Redis, PostgreSQL and SeaweedFS
    worker = start_process(["worker", "--concurrency", "1", "--loglevel", "INFO"], env)
    # When the bucket's prefix is ingested
    ingest = deepscreen("ingest", f"s3://{bucket}/incoming/", env=env, cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "22 new, 0 already known, 1 skipped by suffix; 2 classify tasks queued" in ingest.stdout
    # Then every image gets a verdict
    wait_for(
        lambda: pending(engine, bucket) == 0 or worker.proc.poll() is not None,
        timeout=DEADLINE,
        what="every image to be done or failed",
    )
    assert worker.proc.poll() is None, worker.output()
    with session_scope(make_session_factory(engine)) as session:
        images = list(session.scalars(select(Image).where(Image.bucket == bucket)))
        predictions = list(
            session.scalars(select(Prediction).join(Image).where(Image.bucket == bucket))
        )
        versions = session.scalar(select(func.count()).select_from(ModelVersion))
    failed = {i.key: i.failure_reason or "" for i in images if i.status is ImageStatus.FAILED}
    done = [i for i in images if i.status is ImageStatus.DONE]
    assert sorted(failed) == ["incoming/corrupt.jpg", "incoming/truncated.png"], worker.output()
    assert all(reason.startswith("undecodable: ") for reason in failed.values())
    assert len(done) == 20
    # ... exactly once, by the one registered model
    assert sorted(p.image_id for p in predictions) == sorted(i.id for i in done)
    assert versions == 1
    assert {i.attempts for i in images} == {1}
    assert all(i.sha256 and i.width and i.content_type for i in done)
    # ... from a prefork pool process, which loaded the model after the fork
    log = worker.output()
    assert "ForkPoolWorker" in log and "loaded model" in log

    # When the worker has stopped and the same prefix is ingested again
    assert worker.stop() == 0, worker.output()
    again = deepscreen("ingest", f"s3://{bucket}/incoming/", env=env, cwd=tmp_path)
    # Then nothing new is registered or queued
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 new, 22 already known, 1 skipped by suffix; 0 classify tasks queued" in again.stdout
    broker = redis.Redis.from_url(settings.broker_url)
    try:
        assert broker.llen(CLASSIFY_QUEUE) == 0
    finally:
        broker.close()


def test_beat_scans_the_configured_prefix_and_the_reconciler_recovers_a_lost_message(
    settings: Settings,
    env: dict[str, str],
    engine: Engine,
    bucket: str,
    start_process: Callable[..., Process],
) -> None:
    # Given an image registered an hour ago whose message was lost (never enqueued)
    store = S3Store(bucket, make_s3_client(settings))
    stray = next(o for o in store.list(prefix="incoming/img000"))
    lost = ObjectInfo(bucket, "elsewhere/lost.png", stray.etag, stray.size, stray.last_modified)
    store.put(lost.key, store.get(stray.key))
    with session_scope(make_session_factory(engine)) as session:
        [lost_id] = queries.register_images(
            session=session,
            objects=[lost],
            source=ImageSource.EVENT,
            now=utcnow() - timedelta(hours=1),
        )
    # When a worker and beat run, beat scanning incoming/ and reconciling every 2 s
    periodic = {
        **env,
        "DEEPSCREEN_SCAN_URLS": f"s3://{bucket}/incoming/",
        "DEEPSCREEN_SCAN_INTERVAL": "2",
        "DEEPSCREEN_RECONCILE_INTERVAL": "2",
        "DEEPSCREEN_RECONCILE_AFTER": "600",
    }
    worker = start_process(["worker", "--concurrency", "1"], periodic)
    beat = start_process(["beat"], periodic)
    # Then the scanned images and the lost one all get a verdict, each exactly once
    wait_for(
        lambda: (
            decided(engine, bucket) == 23
            or worker.proc.poll() is not None
            or beat.proc.poll() is not None
        ),
        timeout=DEADLINE,
        what="the scan and the reconciler to get every image decided",
    )
    assert worker.proc.poll() is None, worker.output()
    assert beat.proc.poll() is None, beat.output()
    with session_scope(make_session_factory(engine)) as session:
        lost_image = session.get(Image, lost_id)
        assert lost_image is not None and lost_image.status is ImageStatus.DONE
        per_image = session.execute(
            select(Prediction.image_id, func.count())
            .join(Image)
            .where(Image.bucket == bucket)
            .group_by(Prediction.image_id)
        ).all()
    assert len(per_image) == 21 and {n for _, n in per_image} == {1}
    assert "reconcile: re-enqueued images" in worker.output()


def decided(engine: Engine, bucket: str) -> int:
    with session_scope(make_session_factory(engine)) as session:
        counts = queries.count_images_by_status(session=session, buckets=[bucket])
    return counts[ImageStatus.DONE] + counts[ImageStatus.FAILED]
