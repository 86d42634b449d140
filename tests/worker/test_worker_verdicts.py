"""The review policy, and the verdict rows a classify batch writes with its predictions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import ExecutionContext
from sqlalchemy.engine.default import CACHE_HIT
from test_worker_classify import predictions, register

from deepscreen.config import Settings
from deepscreen.db.base import utcnow
from deepscreen.db.models import Prediction
from deepscreen.db.moderation import ReviewReason, ReviewState, Verdict
from deepscreen.db.session import session_scope
from deepscreen.review import audit_draw, record_verdicts, review_need
from worker.classify import classify_batch
from worker.runtime import Runtime

MakeImages = Callable[..., list[str]]


@pytest.mark.parametrize(
    ("score", "state", "reason"),
    [
        (0.50, ReviewState.OPEN, ReviewReason.UNCERTAIN),  # on the threshold
        (0.64, ReviewState.OPEN, ReviewReason.UNCERTAIN),  # inside the band above
        (0.36, ReviewState.OPEN, ReviewReason.UNCERTAIN),  # inside the band below
        (0.90, ReviewState.OPEN, ReviewReason.FAKE),  # a confident fake
        (0.10, ReviewState.NONE, None),  # a confident real, not drawn for audit
    ],
)
def test_the_policy_sends_uncertain_and_fake_verdicts_to_the_queue(
    score: float, state: ReviewState, reason: ReviewReason | None
) -> None:
    settings = Settings(review_band=0.15, review_fakes=True, review_audit_rate=0.0)
    need = review_need(image_id=1, score=score, threshold=0.5, settings=settings)
    assert (need.state, need.reason) == (state, reason)


def test_nearer_the_threshold_comes_first_then_fakes_then_audits() -> None:
    settings = Settings(review_band=0.15, review_audit_rate=1.0)
    near, edge, fake, audit = (
        review_need(image_id=1, score=s, threshold=0.5, settings=settings).priority
        for s in (0.51, 0.64, 0.99, 0.01)
    )
    assert near > edge > fake > audit > 0


def test_the_audit_sample_is_the_configured_share_and_stable() -> None:
    settings = Settings(review_band=0.0, review_audit_rate=0.1)
    drawn = [
        review_need(image_id=i, score=0.01, threshold=0.5, settings=settings).reason
        for i in range(20_000)
    ]
    share = drawn.count(ReviewReason.AUDIT) / len(drawn)
    assert 0.09 < share < 0.11
    assert audit_draw(1234) == audit_draw(1234)
    # Fakes stay out of the queue when the policy says so
    off = replace(settings, review_fakes=False, review_audit_rate=0.0)
    assert review_need(image_id=1, score=0.99, threshold=0.5, settings=off).reason is None


def test_a_batch_writes_one_verdict_per_classified_image_and_again_changes_nothing(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given 6 images and the corrupt files, classified
    make_images(folder, 6)
    ids = register(runtime, folder)
    classify_batch(ids, runtime=runtime)
    # Then each classified image has one verdict pointing at its prediction
    expected = {p.image_id: p for p in predictions(runtime, ids)}
    with session_scope(runtime.session_factory) as session:
        verdicts = {v.image_id: v for v in session.scalars(select(Verdict))}
        assert set(verdicts) >= set(expected) and len(expected) == 6
        for image_id, prediction in expected.items():
            verdict = verdicts[image_id]
            assert verdict.prediction_id == prediction.id
            assert verdict.score == prediction.score
            assert verdict.final_label == verdict.model_label == prediction.label
            assert verdict.human_label is None
            need = review_need(
                image_id=image_id,
                score=prediction.score,
                threshold=prediction.threshold,
                settings=runtime.settings,
            )
            assert (verdict.state, verdict.reason) == (need.state, need.reason)
        before = {i: (v.id, v.updated_at) for i, v in verdicts.items()}
    # When the verdicts are recorded again for the same predictions
    with session_scope(runtime.session_factory) as session:
        written = record_verdicts(
            session=session,
            image_ids=list(expected),
            model_version_id=runtime.model_version_id,
            settings=runtime.settings,
            now=utcnow(),
        )
    # Then nothing changes
    assert written == []
    with session_scope(runtime.session_factory) as session:
        after = {v.image_id: (v.id, v.updated_at) for v in session.scalars(select(Verdict))}
    assert {i: after[i] for i in before} == before


def test_batches_write_predictions_and_verdicts_with_a_cached_statement(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    """Each batch inserts its predictions and its verdicts with one INSERT ... ON
    CONFLICT each, taken from SQLAlchemy's statement cache: the dialects' insert
    constructs have no cache key, and compiling a multi-row one cost milliseconds of
    CPU per batch."""
    # Given 8 images, registered
    make_images(folder, 8, corrupt=False)
    ids = register(runtime, folder)
    engine = runtime.session_factory.kw["bind"]
    inserts: list[tuple[str, ExecutionContext]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split(None, 3)
        if words[:2] == ["INSERT", "INTO"] and words[2] in ("predictions", "verdicts"):
            inserts.append((words[2], args[-2]))

    event.listen(engine, "before_cursor_execute", record)
    try:
        # When two batches of the same size classify them
        first = classify_batch(ids[:4], runtime=runtime)
        second = classify_batch(ids[4:], runtime=runtime)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert len(first.classified) == len(second.classified) == 4
    # Then each batch sent one insert per table, and the second batch's were cache hits
    assert [table for table, _ in inserts] == ["predictions", "verdicts"] * 2
    assert [context.cache_hit == CACHE_HIT for _, context in inserts[2:]] == [True, True]
    # And the rows hold what the batch computed: a whole-image model stores no faces
    # (SQL NULL), and every classified image has a verdict on its prediction
    rows = predictions(runtime, ids)
    assert len(rows) == 8 and all(p.reason is None for p in rows)
    with session_scope(runtime.session_factory) as session:
        no_faces = select(func.count()).where(
            Prediction.image_id.in_(ids), Prediction.faces.is_(None)
        )
        assert session.scalar(no_faces) == 8
        verdicts = session.scalars(select(Verdict).where(Verdict.image_id.in_(ids))).all()
        assert {v.image_id: v.prediction_id for v in verdicts} == {p.image_id: p.id for p in rows}
        assert all(v.model_version_id == runtime.model_version_id for v in verdicts)
