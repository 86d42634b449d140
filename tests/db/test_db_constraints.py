"""The schema itself keeps re-ingestion and redelivery harmless, on both databases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from deepscreen.db.models import Image, ImageStatus, ModelVersion, Prediction


def predict(image: Image, version: ModelVersion) -> Prediction:
    return Prediction(
        image_id=image.id,
        model_version_id=version.id,
        score=0.9,
        label="fake",
        threshold=0.5,
        inference_ms=3.2,
    )


def test_same_bucket_key_etag_is_rejected(
    db_session: Session, add_image: Callable[..., Image]
) -> None:
    add_image("a.jpg", "e1")
    with pytest.raises(IntegrityError), db_session.begin_nested():
        add_image("a.jpg", "e1")


def test_new_etag_is_a_new_version(add_image: Callable[..., Image]) -> None:
    first = add_image("a.jpg", "e1")
    second = add_image("a.jpg", "e2")
    assert first.id != second.id


def test_second_prediction_by_the_same_model_version_is_rejected(
    db_session: Session,
    add_image: Callable[..., Image],
    add_model_version: Callable[..., ModelVersion],
) -> None:
    image, version = add_image(), add_model_version()
    db_session.add(predict(image, version))
    db_session.flush()
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(predict(image, version))
        db_session.flush()
    # Another model version may still classify the same image.
    db_session.add(predict(image, add_model_version("other")))
    db_session.flush()


def test_model_sha256_is_unique(
    db_session: Session, add_model_version: Callable[..., ModelVersion]
) -> None:
    version = add_model_version()
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(ModelVersion(sha256=version.sha256, name="copy", location="x", card={}))
        db_session.flush()


def test_at_most_one_active_model_version(
    db_session: Session, add_model_version: Callable[..., ModelVersion]
) -> None:
    add_model_version("old")
    add_model_version("older")  # any number of inactive ones
    add_model_version("current", active=True)
    with pytest.raises(IntegrityError), db_session.begin_nested():
        add_model_version("second", active=True)


def test_prediction_needs_an_existing_image(
    db_session: Session, add_model_version: Callable[..., ModelVersion]
) -> None:
    """On SQLite this holds only because make_engine turns foreign keys on."""
    version = add_model_version()
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.add(
            Prediction(
                image_id=987654321,
                model_version_id=version.id,
                score=0.1,
                label="real",
                threshold=0.5,
                inference_ms=1.0,
            )
        )
        db_session.flush()


def test_deleting_an_image_deletes_its_predictions(
    db_session: Session,
    add_image: Callable[..., Image],
    add_model_version: Callable[..., ModelVersion],
) -> None:
    image = add_image()
    db_session.add(predict(image, add_model_version()))
    db_session.flush()
    image_id = image.id
    db_session.expunge_all()
    # A bulk delete skips the ORM cascade: the database's ON DELETE CASCADE does it.
    db_session.execute(delete(Image).where(Image.id == image_id))
    remaining = db_session.scalars(select(Prediction).where(Prediction.image_id == image_id))
    assert remaining.all() == []


def test_enums_are_stored_by_value(db_session: Session, add_image: Callable[..., Image]) -> None:
    image = add_image(status=ImageStatus.PROCESSING)
    raw = db_session.execute(
        text("SELECT status, source FROM images WHERE id = :id"), {"id": image.id}
    ).one()
    assert tuple(raw) == ("processing", "scan")


def test_unknown_status_is_rejected_by_the_database(
    db_session: Session, add_image: Callable[..., Image]
) -> None:
    image = add_image()
    with pytest.raises(IntegrityError), db_session.begin_nested():
        db_session.execute(
            text("UPDATE images SET status = 'lost' WHERE id = :id"), {"id": image.id}
        )


def test_defaults_and_timestamps_are_aware_utc(
    db_session: Session, add_image: Callable[..., Image]
) -> None:
    paris = timezone(timedelta(hours=2))
    started = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=paris)
    image = add_image(started_at=started)
    image_id = image.id
    db_session.expunge_all()  # read back from the database, not the identity map
    loaded = db_session.get(Image, image_id)
    assert loaded is not None
    assert loaded.status is ImageStatus.QUEUED
    assert loaded.attempts == 0
    assert loaded.started_at == started
    assert loaded.started_at.tzinfo is not None and loaded.started_at.utcoffset() == timedelta(0)
    assert abs(loaded.created_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert loaded.created_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(db_session: Session, add_image: Callable[..., Image]) -> None:
    with pytest.raises(StatementError, match="naive datetime"), db_session.begin_nested():
        add_image(started_at=datetime(2024, 1, 1))


def test_model_card_round_trips_as_json(
    db_session: Session, add_model_version: Callable[..., ModelVersion]
) -> None:
    version = add_model_version()
    version_id = version.id
    db_session.expunge_all()
    loaded = db_session.get(ModelVersion, version_id)
    assert loaded is not None
    assert loaded.card == {"labels": ["real", "fake"], "threshold": 0.5}
