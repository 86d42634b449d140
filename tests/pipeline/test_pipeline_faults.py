"""Faults in the production shape: a worker killed mid-run and a Redis restart mid-run
lose no image and classify none twice (SeaweedFS, PostgreSQL, Redis, real workers).

Both runs use short time limits so that redelivery and reconciliation happen within
the test: a message is redelivered 80 s after its worker died (the time limit plus
the longest retry wait, 60 s, is the least Redis may wait), and the reconciler
re-enqueues an image queued or processing for 20 s. The same faults at default
settings: test_pipeline_recovery.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pipeline_helpers import Process, bucket_results, ingest_bucket, pending, wait_decided, wait_for
from sample_images import CORRUPT_FILES
from sqlalchemy import Engine

from deepscreen.db.models import ImageStatus

#: Seconds the run gets after the fault to classify everything.
DEADLINE = 300

#: Short limits: a dead worker's messages come back after 80 s, stuck images after 20 s.
FAST_RECOVERY = {
    "DEEPSCREEN_TASK_SOFT_TIME_LIMIT": "10",
    "DEEPSCREEN_TASK_TIME_LIMIT": "15",
    "DEEPSCREEN_BROKER_VISIBILITY_TIMEOUT": "80",
    "DEEPSCREEN_RECONCILE_AFTER": "20",
    "DEEPSCREEN_RECONCILE_INTERVAL": "3",
}


def assert_every_image_decided_once(engine: Engine, bucket: str, images: int) -> None:
    """Every image done with exactly one prediction; the corrupt files failed."""
    rows, per_image = bucket_results(engine, bucket)
    done = [i for i in rows if i.status is ImageStatus.DONE]
    failed = sorted(i.key for i in rows if i.status is ImageStatus.FAILED)
    assert len(rows) == images + len(CORRUPT_FILES)
    assert failed == sorted(f"incoming/{k}" for k in CORRUPT_FILES)
    assert len(done) == images
    assert per_image == {i.id: 1 for i in done}


def test_a_worker_killed_mid_run_loses_nothing_and_duplicates_nothing(
    stack_env: dict[str, str],
    stack_engine: Engine,
    fill_bucket: Callable[[int], str],
    start_process: Callable[..., Process],
    tmp_path: Path,
) -> None:
    # Given 500 images and 3 corrupt files ingested, and a worker of 2 processes at work
    bucket = fill_bucket(500)
    env = {**stack_env, **FAST_RECOVERY}
    ingest_bucket(bucket, env, tmp_path)
    first = start_process(["worker", "--concurrency", "2"], env)
    wait_decided(
        stack_engine,
        bucket,
        first,
        timeout=DEADLINE,
        what="the first worker to decide 50 images",
        left=453,
    )
    # When the worker and its pool processes are killed with SIGKILL mid-run
    first.kill_group()
    left = pending(stack_engine, bucket)
    assert left > 0, "the run finished before the kill; the test needs a longer run"
    # ... and a new worker starts
    second = start_process(["worker", "--concurrency", "2"], env)
    # Then every image ends classified exactly once: none lost, none duplicated
    wait_for(
        lambda: pending(stack_engine, bucket) == 0 or second.proc.poll() is not None,
        timeout=DEADLINE,
        what=f"the second worker to decide the {left} images left",
    )
    assert second.proc.poll() is None, second.output()
    assert_every_image_decided_once(stack_engine, bucket, 500)


def test_a_redis_restart_mid_run_loses_nothing(
    stack_env: dict[str, str],
    stack_engine: Engine,
    fill_bucket: Callable[[int], str],
    start_process: Callable[..., Process],
    redis_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    # Given 300 images and 3 corrupt files ingested into a Redis of the test's own,
    # and a worker and beat (the reconciler) at work
    bucket = fill_bucket(300)
    env = {**stack_env, **FAST_RECOVERY, "DEEPSCREEN_BROKER_URL": redis_server.url}
    ingest_bucket(bucket, env, tmp_path)
    worker = start_process(["worker", "--concurrency", "1"], env)
    beat = start_process(["beat"], env)
    wait_decided(
        stack_engine,
        bucket,
        worker,
        timeout=DEADLINE,
        what="the worker to decide 30 images",
        left=273,
    )
    # When Redis stops for 5 seconds and comes back empty (it keeps nothing on disk)
    redis_server.stop()
    left = pending(stack_engine, bucket)
    assert left > 0, "the run finished before Redis stopped; the test needs a longer run"
    time.sleep(5)
    redis_server.start()
    # Then the run completes: the worker and beat reconnect, and the reconciler
    # re-enqueues from the database what the broker lost
    wait_for(
        lambda: (
            pending(stack_engine, bucket) == 0
            or worker.proc.poll() is not None
            or beat.proc.poll() is not None
        ),
        timeout=DEADLINE,
        what=f"the run to decide the {left} images left after Redis came back",
    )
    assert worker.proc.poll() is None, worker.output()
    assert beat.proc.poll() is None, beat.output()
    assert_every_image_decided_once(stack_engine, bucket, 300)
    assert "reconcile: re-enqueued images" in worker.output()
