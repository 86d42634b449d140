"""Hot reload end to end: a real prefork `deepscreen worker` (two pool processes) on
Redis, PostgreSQL and SeaweedFS, with the model registry in a SeaweedFS bucket, follows
a promotion and a rollback without being restarted."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from model_variants import model_variant
from pipeline_helpers import Process, ingest_bucket, wait_decided
from sqlalchemy import Engine, select

from deepscreen import registry
from deepscreen.config import Settings
from deepscreen.db.models import Image, Prediction
from deepscreen.db.moderation import Verdict
from deepscreen.db.session import make_session_factory, session_scope
from deepscreen.storage import make_s3_client

#: Seconds a worker gets to start, load a model and classify one bucket.
DEADLINE = 300
#: Longer than the worker's registry check interval (worker.serving.CHECK_INTERVAL).
SETTLE = 1.5


def pool_pids(pid: int) -> set[int]:
    """The child processes of ``pid`` (the prefork pool), from /proc."""
    children: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def versions_in(engine: Engine, bucket: str) -> tuple[set[int], set[int]]:
    """The model version ids of the predictions and of the verdicts of ``bucket``."""
    with session_scope(make_session_factory(engine)) as session:
        predicted = session.scalars(
            select(Prediction.model_version_id).join(Image).where(Image.bucket == bucket)
        ).all()
        decided = session.scalars(
            select(Verdict.model_version_id).join(Image).where(Image.bucket == bucket)
        ).all()
    return set(predicted), set(decided)


def test_a_running_worker_follows_a_promotion_and_a_rollback(
    stack_settings: Settings,
    stack_env: dict[str, str],
    stack_engine: Engine,
    fill_bucket: Callable[[int], str],
    start_process: Callable[..., Process],
    tmp_path: Path,
) -> None:
    # Given a model registry in a SeaweedFS bucket, and a prefork worker with two pool
    # processes taking batches of 4
    registry_bucket = f"registry-{secrets.token_hex(4)}"
    make_s3_client(stack_settings).create_bucket(Bucket=registry_bucket)
    settings = replace(stack_settings, model_registry_url=f"s3://{registry_bucket}/")
    env = {
        **stack_env,
        "DEEPSCREEN_MODEL_REGISTRY_URL": settings.model_registry_url,
        "DEEPSCREEN_CLASSIFY_BATCH_SIZE": "4",
    }
    worker = start_process(["worker", "--concurrency", "2", "--loglevel", "INFO"], env)
    factory = make_session_factory(stack_engine)

    def classify_bucket() -> str:
        bucket = fill_bucket(8)
        ingest_bucket(bucket, env, tmp_path)
        wait_decided(
            stack_engine,
            bucket,
            worker,
            timeout=DEADLINE,
            what=f"every image of {bucket} to be done or failed",
        )
        assert worker.proc.poll() is None, worker.output()
        return bucket

    # When a first bucket is classified, the packaged model becomes the active version
    first = classify_bucket()
    predicted, decided = versions_in(stack_engine, first)
    assert len(predicted) == 1 and predicted == decided, worker.output()
    [default_id] = predicted
    pool = pool_pids(worker.proc.pid)
    assert len(pool) == 2

    # When a second model is published to the registry bucket and promoted
    variant = model_variant(tmp_path / "variant", pad=32, threshold=0.5)
    with session_scope(factory) as session:
        version = registry.publish(variant, settings=settings, session=session)
        new_id, new_sha = version.id, version.sha256
        assert version.location.startswith(f"s3://{registry_bucket}/models/{new_sha}/")
        registry.activate(session, new_id)
    time.sleep(SETTLE)
    second = classify_bucket()
    # Then the second bucket's predictions and verdicts all carry the new version,
    # from the same worker and pool processes, which fetched it from the registry
    assert versions_in(stack_engine, second) == ({new_id}, {new_id}), worker.output()
    assert pool_pids(worker.proc.pid) == pool
    assert (stack_settings.data_dir / "models" / new_sha / "model.tflite").is_file()
    assert f"serving model {new_sha[:12]} (version {new_id}), was " in worker.output()

    # When the packaged model is rolled back to
    with session_scope(factory) as session:
        registry.activate(session, default_id)
    time.sleep(SETTLE)
    third = classify_bucket()
    # Then the third bucket carries the old version again, still without a restart
    assert versions_in(stack_engine, third) == ({default_id}, {default_id}), worker.output()
    assert pool_pids(worker.proc.pid) == pool
    # ... and the first bucket was not classified again by either version
    assert versions_in(stack_engine, first) == ({default_id}, {default_id})
    assert worker.stop() == 0, worker.output()
