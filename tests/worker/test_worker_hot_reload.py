"""Hot reload and shadow mode: a runtime follows the registry's active version from one
batch to the next without being rebuilt, refuses an artefact that does not match its
sha256, and runs a version in shadow without letting it decide anything. On SQLite and
PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from model_variants import model_variant
from sqlalchemy import select, update
from worker_helpers import register

from deepscreen import registry
from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.models import ImageStatus, ModelVersion, Prediction
from deepscreen.db.moderation import Verdict
from deepscreen.db.session import session_scope
from deepscreen.inference import Classifier
from worker.classify import classify_batch
from worker.runtime import Runtime

MakeImages = Callable[..., list[str]]


@pytest.fixture
def live(settings: Settings, classifier: Classifier) -> Iterator[Runtime]:
    """A runtime that checks the registry before every batch; the packaged model active.

    The module's database outlives the test: the packaged model is made the only active
    version again, with nothing in shadow, at the end."""
    rt = Runtime(settings, classifier=classifier, check_interval=0)
    default_id = rt.model_version_id
    yield rt
    with session_scope(rt.session_factory) as session:
        registry.activate(session, default_id)
        session.execute(update(ModelVersion).values(shadow=False))
    rt.close()


@pytest.fixture
def variant(tmp_path: Path) -> Path:
    """A second valid model: another sha256, threshold 0.5."""
    return model_variant(tmp_path / "variant", pad=16, threshold=0.5)


def publish(runtime: Runtime, folder: Path) -> tuple[int, str]:
    with session_scope(runtime.session_factory) as session:
        version = registry.publish(folder, settings=runtime.settings, session=session)
        return version.id, version.sha256


def activate(runtime: Runtime, version_id: int) -> None:
    with session_scope(runtime.session_factory) as session:
        registry.activate(session, version_id)


def shadow(runtime: Runtime, version_id: int) -> None:
    with session_scope(runtime.session_factory) as session:
        registry.set_shadow(session, version_id, True)


def new_batch(runtime: Runtime, folder: Path, make_images: MakeImages, count: int = 3) -> list[int]:
    """``count`` new images in a bucket of their own, registered; their ids."""
    make_images(folder, count, corrupt=False)
    return register(runtime, folder)


def versions_of(runtime: Runtime, ids: list[int]) -> tuple[list[int], list[int]]:
    """The model version ids of the predictions and of the verdicts of ``ids``."""
    with session_scope(runtime.session_factory) as session:
        predicted = session.scalars(
            select(Prediction.model_version_id).where(Prediction.image_id.in_(ids))
        ).all()
        decided = session.scalars(
            select(Verdict.model_version_id).where(Verdict.image_id.in_(ids))
        ).all()
        return sorted(predicted), sorted(decided)


def test_a_promotion_reaches_the_next_batch_and_a_rollback_the_one_after(
    live: Runtime, classifier: Classifier, variant: Path, tmp_path: Path, make_images: MakeImages
) -> None:
    # Given a runtime serving the packaged model, and a second version published
    default_id = live.model_version_id
    first = new_batch(live, tmp_path / "first", make_images)
    classify_batch(first, runtime=live)
    new_id, new_sha = publish(live, variant)
    assert live.classifier.version == classifier.version  # publishing is not promoting
    # When the second version is promoted
    activate(live, new_id)
    second = new_batch(live, tmp_path / "second", make_images)
    outcome = classify_batch(second, runtime=live)
    # Then the next batch of the same runtime is served by it, fetched and verified
    assert sorted(outcome.classified) == second
    assert versions_of(live, second) == ([new_id] * 3, [new_id] * 3)
    assert live.classifier.version == new_sha and live.model_version_id == new_id
    with session_scope(live.session_factory) as session:
        thresholds = session.scalars(
            select(Prediction.threshold).where(Prediction.image_id.in_(second))
        ).all()
        assert set(thresholds) == {0.5}
    # ... and the first batch keeps the version that decided it (nothing re-queued)
    assert versions_of(live, first) == ([default_id] * 3, [default_id] * 3)
    # When the packaged model is rolled back to
    activate(live, default_id)
    third = new_batch(live, tmp_path / "third", make_images)
    classify_batch(third, runtime=live)
    # Then the next batch carries the old version again, served by the classifier it had
    assert versions_of(live, third) == ([default_id] * 3, [default_id] * 3)
    assert live.classifier is classifier


def test_an_artefact_that_does_not_match_its_sha256_is_refused(
    live: Runtime,
    classifier: Classifier,
    variant: Path,
    tmp_path: Path,
    make_images: MakeImages,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a published version whose stored .tflite was altered afterwards
    default_id = live.model_version_id
    new_id, new_sha = publish(live, variant)
    stored = live.settings.data_dir / "registry" / "models" / new_sha / "model.tflite"
    stored.write_bytes(stored.read_bytes()[:-16] + b"\1" * 16)
    # When it is promoted and a batch runs
    activate(live, new_id)
    ids = new_batch(live, tmp_path / "images", make_images)
    with caplog.at_level(logging.ERROR, logger="worker.serving"):
        outcome = classify_batch(ids, runtime=live)
    # Then the worker refuses it, says so, and keeps serving the model it had
    assert sorted(outcome.classified) == ids
    assert versions_of(live, ids) == ([default_id] * 3, [default_id] * 3)
    assert live.classifier is classifier
    assert f"cannot load model version {new_id} ({new_sha[:12]})" in caplog.text
    assert "refusing to load it" in caplog.text
    assert not (live.settings.data_dir / "models" / new_sha).exists()


def test_a_shadow_version_scores_every_image_but_decides_nothing(
    live: Runtime, variant: Path, tmp_path: Path, make_images: MakeImages
) -> None:
    # Given the packaged model active and a second version in shadow
    default_id = live.model_version_id
    new_id, _ = publish(live, variant)
    shadow(live, new_id)
    # When a batch runs
    ids = new_batch(live, tmp_path / "images", make_images, count=4)
    outcome = classify_batch(ids, runtime=live)
    # Then each image has a prediction of both versions, a verdict of the active one only
    assert sorted(outcome.classified) == ids
    predicted, decided = versions_of(live, ids)
    assert predicted == sorted([default_id] * 4 + [new_id] * 4)
    assert decided == [default_id] * 4
    with session_scope(live.session_factory) as session:
        rows = session.scalars(select(Prediction).where(Prediction.image_id.in_(ids))).all()
        by_version = {(p.image_id, p.model_version_id): p for p in rows}
        for image_id in ids:
            active, candidate = by_version[image_id, default_id], by_version[image_id, new_id]
            # Same model bytes apart from padding: same score on the same pixels
            assert candidate.score == pytest.approx(active.score, abs=1e-6)
            assert candidate.threshold == 0.5 and candidate.inference_ms > 0
    assert live.serving().shadow is not None
    # When the shadow version is promoted, it is served without being loaded again
    loaded = live.serving().shadow
    activate(live, new_id)
    assert live.serving().active.classifier is (loaded.classifier if loaded else None)
    assert live.serving().shadow is None


def test_a_shadow_version_that_cannot_load_is_skipped(
    live: Runtime, variant: Path, tmp_path: Path, make_images: MakeImages
) -> None:
    # Given a version in shadow whose artefact is gone from the registry
    default_id = live.model_version_id
    new_id, new_sha = publish(live, variant)
    (live.settings.data_dir / "registry" / "models" / new_sha / "model.tflite").unlink()
    shadow(live, new_id)
    # When a batch runs
    ids = new_batch(live, tmp_path / "images", make_images)
    outcome = classify_batch(ids, runtime=live)
    # Then the batch is classified by the active model alone
    assert sorted(outcome.classified) == ids
    assert versions_of(live, ids) == ([default_id] * 3, [default_id] * 3)
    with session_scope(live.session_factory) as session:
        statuses = {i.status for i in queries.get_images(session=session, ids=ids)}
    assert statuses == {ImageStatus.DONE}
