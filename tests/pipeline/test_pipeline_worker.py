"""The production shape end to end: SeaweedFS (S3) -> `deepscreen ingest` -> Redis ->
a real `deepscreen worker` subprocess (prefork) -> PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import redis
from pipeline_helpers import (
    Process,
    bucket_results,
    deepscreen,
    ingest_bucket,
    verdict_counts,
    wait_decided,
    wait_for,
)
from sample_images import CORRUPT_FILES
from sqlalchemy import Engine, func, select

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus, ModelVersion
from deepscreen.db.session import make_session_factory, session_scope
from deepscreen.storage import ObjectInfo, S3Store, make_s3_client
from deepscreen.taskqueue import CLASSIFY_QUEUE

#: Seconds a worker gets to start, load the model and classify the run.
DEADLINE = 300


def test_a_worker_gives_every_image_in_a_bucket_a_verdict_exactly_once(
    stack_settings: Settings,
    stack_env: dict[str, str],
    stack_engine: Engine,
    fill_bucket: Callable[[int], str],
    start_process: Callable[..., Process],
    tmp_path: Path,
) -> None:
    # Given 50 images (real faces from ../shared/data when present) and 3 corrupt files
    # in a bucket, and a worker subprocess on Redis, PostgreSQL and SeaweedFS
    bucket = fill_bucket(50)
    worker = start_process(["worker", "--concurrency", "1", "--loglevel", "INFO"], stack_env)
    # When the bucket's prefix is ingested
    ingested = ingest_bucket(bucket, stack_env, tmp_path)
    assert "53 new, 0 already known, 1 skipped by suffix; 4 classify tasks queued" in ingested
    # Then every image gets a verdict
    wait_decided(
        stack_engine, bucket, worker, timeout=DEADLINE, what="every image to be done or failed"
    )
    assert worker.proc.poll() is None, worker.output()
    images, per_image = bucket_results(stack_engine, bucket)
    with session_scope(make_session_factory(stack_engine)) as session:
        versions = session.scalar(select(func.count()).select_from(ModelVersion))
    failed = {i.key: i.failure_reason or "" for i in images if i.status is ImageStatus.FAILED}
    done = [i for i in images if i.status is ImageStatus.DONE]
    assert sorted(failed) == sorted(f"incoming/{k}" for k in CORRUPT_FILES), worker.output()
    assert all(reason.startswith("undecodable: ") for reason in failed.values()), failed
    assert len(done) == 50
    # ... exactly once, by the one registered model
    assert per_image == {i.id: 1 for i in done}
    assert versions == 1
    assert {i.attempts for i in images} == {1}
    assert all(i.sha256 and i.width and i.content_type for i in done)
    # ... from a prefork pool process, which loaded the model after the fork
    log = worker.output()
    assert "ForkPoolWorker" in log and "loaded model" in log

    # When the worker has stopped and the same prefix is ingested again
    assert worker.stop() == 0, worker.output()
    again = deepscreen("ingest", f"s3://{bucket}/incoming/", env=stack_env, cwd=tmp_path)
    # Then nothing new is registered or queued
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 new, 53 already known, 1 skipped by suffix; 0 classify tasks queued" in again.stdout
    broker = redis.Redis.from_url(stack_settings.broker_url)
    try:
        assert broker.llen(CLASSIFY_QUEUE) == 0
    finally:
        broker.close()


def test_beat_scans_the_configured_prefix_and_the_reconciler_recovers_a_lost_message(
    stack_settings: Settings,
    stack_env: dict[str, str],
    stack_engine: Engine,
    fill_bucket: Callable[[int], str],
    start_process: Callable[..., Process],
) -> None:
    # Given a bucket of 20 images and 3 corrupt files
    bucket = fill_bucket(20)
    store = S3Store(bucket, make_s3_client(stack_settings))
    # When a worker and beat run, beat scanning incoming/ and reconciling every 2 s
    periodic = {
        **stack_env,
        "DEEPSCREEN_SCAN_URLS": f"s3://{bucket}/incoming/",
        "DEEPSCREEN_SCAN_INTERVAL": "2",
        "DEEPSCREEN_RECONCILE_INTERVAL": "2",
        "DEEPSCREEN_RECONCILE_AFTER": "600",
    }
    worker = start_process(["worker", "--concurrency", "1"], periodic)
    beat = start_process(["beat"], periodic)

    def decided_or_dead(n: int) -> bool:
        return (
            decided(stack_engine, bucket) == n
            or worker.proc.poll() is not None
            or beat.proc.poll() is not None
        )

    # Then the scanned images all get a verdict
    wait_for(lambda: decided_or_dead(23), timeout=DEADLINE, what="the scan to get 23 decided")
    assert worker.proc.poll() is None, worker.output()
    # And when an image registered an hour ago elsewhere in the bucket turns up with its
    # message lost (never enqueued; registered after the scan's batches, so no
    # micro-batch wake-up claims it on the way), the reconciler sends it again
    stray = next(o for o in store.list(prefix="incoming/") if o.key.endswith(".jpg"))
    lost = ObjectInfo(bucket, "elsewhere/lost.jpg", stray.etag, stray.size, stray.last_modified)
    store.put(lost.key, store.get(stray.key))
    with session_scope(make_session_factory(stack_engine)) as session:
        [lost_id] = queries.register_images(
            session=session,
            objects=[lost],
            source=ImageSource.EVENT,
            now=utcnow() - timedelta(hours=1),
        )
    wait_for(
        lambda: decided_or_dead(24),
        timeout=DEADLINE,
        what="the reconciler to get the lost image decided",
    )
    assert worker.proc.poll() is None, worker.output()
    assert beat.proc.poll() is None, beat.output()
    with session_scope(make_session_factory(stack_engine)) as session:
        lost_image = session.get(Image, lost_id)
        assert lost_image is not None and lost_image.status is ImageStatus.DONE
    _, per_image = bucket_results(stack_engine, bucket)
    assert len(per_image) == 21 and set(per_image.values()) == {1}
    assert "reconcile: re-enqueued images" in worker.output()


def decided(engine: Engine, bucket: str) -> int:
    counts = verdict_counts(engine, bucket)
    return counts[ImageStatus.DONE] + counts[ImageStatus.FAILED]
