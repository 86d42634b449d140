"""classify_batch, the function behind the classify task, on SQLite and PostgreSQL."""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from sample_images import CORRUPT_FILES
from sqlalchemy import func, select, update
from worker_helpers import register

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus, ModelVersion, Prediction
from deepscreen.db.session import session_scope
from deepscreen.errors import TransientError
from deepscreen.inference import Classifier
from deepscreen.storage import ObjectInfo
from worker.classify import classify_batch, max_attempts
from worker.runtime import Runtime

MakeImages = Callable[..., list[str]]


def images(runtime: Runtime, ids: list[int]) -> dict[str, Image]:
    with session_scope(runtime.session_factory) as session:
        return {i.key: i for i in queries.get_images(session=session, ids=ids)}


def predictions(runtime: Runtime, ids: list[int]) -> list[Prediction]:
    with session_scope(runtime.session_factory) as session:
        stmt = select(Prediction).where(Prediction.image_id.in_(ids)).order_by(Prediction.id)
        return list(session.scalars(stmt))


def test_good_images_get_a_prediction_and_corrupt_ones_fail_with_a_reason(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given 6 images and 3 corrupt files, registered
    make_images(folder, 6)
    ids = register(runtime, folder)
    assert len(ids) == 9
    # When one batch classifies them
    outcome = classify_batch(ids, runtime=runtime, task_id="t-1")
    # Then the good ones are done with one prediction each, the corrupt ones failed
    rows = images(runtime, ids)
    good = [i for i in rows.values() if i.key.startswith("img")]
    assert sorted(outcome.classified) == sorted(i.id for i in good)
    assert {rows[key].id for key in CORRUPT_FILES} == set(outcome.failed)
    for image in good:
        assert image.status is ImageStatus.DONE
        assert image.failure_reason is None
        assert image.attempts == 1
        assert image.finished_at is not None and image.started_at is not None
        assert len(image.sha256 or "") == 64
        assert image.size == (folder / image.key).stat().st_size
        assert image.content_type == ("image/png" if image.key.endswith(".png") else "image/jpeg")
        seed = int(image.key[3:6])
        assert (image.width, image.height) == (60 + seed % 7, 40 + seed % 5)
    for key in CORRUPT_FILES:
        assert rows[key].status is ImageStatus.FAILED
        assert rows[key].failure_reason.startswith("undecodable: ")
        assert rows[key].sha256 is not None  # read, just not decodable
    preds = predictions(runtime, ids)
    assert sorted(p.image_id for p in preds) == sorted(i.id for i in good)
    classifier = runtime.classifier
    for p in preds:
        assert p.model_version_id == runtime.model_version_id
        assert 0.0 <= p.score <= 1.0
        assert p.label == classifier.label_for(p.score)
        assert p.threshold == classifier.threshold
        assert p.inference_ms > 0


def test_running_a_batch_again_changes_nothing(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    make_images(folder, 3)
    ids = register(runtime, folder)
    classify_batch(ids, runtime=runtime)
    before = [(p.id, p.score, p.created_at) for p in predictions(runtime, ids)]
    # When the same message is delivered again
    again = classify_batch(ids, runtime=runtime)
    # Then every image is skipped: no new prediction, no new attempt
    assert sorted(again.skipped) == sorted(ids)
    assert again.classified == [] and again.failed == {}
    assert [(p.id, p.score, p.created_at) for p in predictions(runtime, ids)] == before
    assert {i.attempts for i in images(runtime, ids).values()} == {1}


def test_unknown_ids_are_skipped(runtime: Runtime) -> None:
    outcome = classify_batch([10**9], runtime=runtime)
    assert outcome.skipped == [10**9]


def test_the_running_model_is_registered_once_and_active(
    runtime: Runtime, classifier: Classifier
) -> None:
    version_id = runtime.model_version_id
    other = Runtime(runtime.settings, classifier=classifier)
    try:
        assert other.model_version_id == version_id
    finally:
        other.close()
    with session_scope(runtime.session_factory) as session:
        version = session.get(ModelVersion, version_id)
        assert version is not None
        assert version.sha256 == classifier.version
        assert version.card == classifier.card
        assert version.active
        count = session.scalar(select(func.count()).select_from(ModelVersion))
        assert count == 1


def test_missing_and_oversized_objects_fail_without_retry(
    settings: Settings, classifier: Classifier, folder: Path, make_images: MakeImages
) -> None:
    make_images(folder, 2, corrupt=False)
    (folder / "big.png").write_bytes(b"x" * 5000)
    small = Runtime(replace(settings, max_image_bytes=4096), classifier=classifier)
    try:
        ids = register(small, folder)
        (folder / "img000.png").unlink()  # deleted after it was listed
        outcome = classify_batch(ids, runtime=small)
        rows = images(small, ids)
        assert rows["img000.png"].failure_reason.startswith("missing_object: ")
        assert rows["big.png"].failure_reason.startswith("oversized: ")
        assert rows["img001.jpg"].status is ImageStatus.DONE
        assert outcome.retry == []
    finally:
        small.close()


def test_transient_errors_are_retried_then_recorded(
    settings: Settings, classifier: Classifier
) -> None:
    # Given an image in a bucket whose S3 endpoint does not answer
    unreachable = replace(
        settings,
        s3_endpoint_url=f"http://127.0.0.1:{closed_port()}",
        s3_access_key_id="key",
        s3_secret_access_key="secret",
        s3_max_attempts=1,
        s3_connect_timeout=0.5,
    )
    runtime = Runtime(unreachable, classifier=classifier)
    try:
        obj = ObjectInfo("unreachable-bucket", "a.jpg", "etag", 10, utcnow())
        with session_scope(runtime.session_factory) as session:
            [image_id] = queries.register_images(
                session=session, objects=[obj], source=ImageSource.SCAN
            )
        # When a try that is not the last fails, it raises for a retry and leaves it processing
        with pytest.raises(TransientError):
            classify_batch([image_id], runtime=runtime)
        [image] = images(runtime, [image_id]).values()
        assert image.status is ImageStatus.PROCESSING and image.attempts == 1
        # When the last try fails too, the image fails with the reason
        outcome = classify_batch([image_id], runtime=runtime, final_attempt=True)
        [image] = images(runtime, [image_id]).values()
        assert image.status is ImageStatus.FAILED
        assert image.failure_reason.startswith("storage_unavailable: ")
        assert image.failure_reason.endswith("(gave up after 2 attempts)")
        assert outcome.failed == {image_id: image.failure_reason}
    finally:
        runtime.close()


def test_an_image_out_of_attempts_fails_instead_of_looping(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given an image whose earlier attempts all died with their worker
    make_images(folder, 1, corrupt=False)
    [image_id] = register(runtime, folder)
    limit = max_attempts(runtime.settings)
    with session_scope(runtime.session_factory) as session:
        session.execute(
            update(Image)
            .where(Image.id == image_id)
            .values(status=ImageStatus.PROCESSING, attempts=limit)
        )
    # When its message is delivered once more
    outcome = classify_batch([image_id], runtime=runtime)
    # Then it fails for good instead of being tried again
    [image] = images(runtime, [image_id]).values()
    assert image.status is ImageStatus.FAILED
    assert image.failure_reason == f"gave up after {limit} attempts"
    assert outcome.failed == {image_id: image.failure_reason}
    assert predictions(runtime, [image_id]) == []


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_batch_delivered_twice_at_once_gives_one_prediction_per_image(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given a batch, and a second worker process (own engine, own model) with the same message
    make_images(folder, 4, corrupt=False)
    ids = register(runtime, folder)
    other = Runtime(runtime.settings)
    try:
        # When both run it at the same time
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda rt: classify_batch(ids, runtime=rt), [runtime, other]))
        # Then each image has exactly one prediction and is done
        assert sorted(p.image_id for p in predictions(runtime, ids)) == ids
        assert {i.status for i in images(runtime, ids).values()} == {ImageStatus.DONE}
        assert sorted(
            outcomes[0].classified
            + outcomes[1].classified
            + outcomes[0].skipped
            + outcomes[1].skipped
        ) == sorted(ids * 2)
    finally:
        other.close()
