"""A model with a face stage in the worker: images without a face are done with a
``no_face`` verdict (no score, a reason), follow ``DEEPSCREEN_REVIEW_NO_FACE``, and
their ``verdict.created`` says so; faces found are stored; a shadow model with another
face stage prepares its own inputs. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from model_variants import model_variant
from sample_images import CORRUPT_FILES, SHARED_DATA, no_face_images, shared_images
from sqlalchemy import delete, select, update
from worker_helpers import register

from deepscreen import registry
from deepscreen.config import Settings
from deepscreen.db.models import Image, ImageStatus, ModelVersion, Prediction
from deepscreen.db.moderation import ReviewReason, ReviewState, Verdict
from deepscreen.db.session import session_scope
from deepscreen.db.webhooks import WebhookEndpoint, WebhookEvent
from deepscreen.faces import FaceStage
from deepscreen.inference import NO_FACE, Classifier
from deepscreen.webhooks import VERDICT_CREATED, new_secret
from worker.classify import classify_batch
from worker.runtime import Runtime

requires_shared = pytest.mark.skipif(
    not (SHARED_DATA / "MANIFEST.csv").is_file(),
    reason=f"../shared/data is absent ({SHARED_DATA}): no real face photos to detect",
)


@pytest.fixture(scope="module")
def face_model(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The packaged network behind the default face stage, under a sha256 of its own."""
    folder = model_variant(
        tmp_path_factory.mktemp("face-model") / "m", pad=48, face_stage=FaceStage()
    )
    return Classifier(folder, num_threads=1, max_batch=4)


@pytest.fixture
def face_runtime(settings: Settings, face_model: Classifier) -> Iterator[Runtime]:
    """A runtime serving ``face_model`` (the active version of this module's database)."""
    rt = Runtime(settings, classifier=face_model, check_interval=0)
    rt.serving()  # registers the model
    with session_scope(rt.session_factory) as session:
        version = session.scalars(
            select(ModelVersion).where(ModelVersion.sha256 == face_model.version)
        ).one()
        registry.activate(session, version.id)
        session.execute(update(ModelVersion).values(shadow=False))
    yield rt
    rt.close()


def with_policy(runtime: Runtime, **changes: object) -> Runtime:
    """A runtime over the same database and model with other review settings."""
    return Runtime(
        replace(runtime.settings, **changes),
        classifier=runtime.classifier,
        check_interval=0,
    )


def stored(runtime: Runtime, ids: Sequence[int]) -> dict[str, tuple[Image, Prediction, Verdict]]:
    """Image, active prediction and verdict of each classified id, by key."""
    with session_scope(runtime.session_factory) as session:
        rows = session.execute(
            select(Image, Prediction, Verdict)
            .join(Verdict, Verdict.image_id == Image.id)
            .join(Prediction, Prediction.id == Verdict.prediction_id)
            .where(Image.id.in_(ids))
        ).all()
        return {image.key: (image, prediction, verdict) for image, prediction, verdict in rows}


def write(folder: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        (folder / key).write_bytes(data)


def test_images_without_a_face_are_done_with_a_no_face_verdict(
    face_runtime: Runtime, folder: Path
) -> None:
    # Given six generated images without a face and three corrupt files
    write(folder, {**no_face_images(), **CORRUPT_FILES})
    ids = register(face_runtime, folder)
    # When one batch classifies them with a model that has a face stage
    outcome = classify_batch(ids, runtime=face_runtime)
    # Then the six are done, not failed; the corrupt files still fail with a reason
    rows = stored(face_runtime, ids)
    assert sorted(rows) == sorted(no_face_images())
    assert len(outcome.classified) == 6 and len(outcome.failed) == 3
    assert all(r.startswith("undecodable: ") for r in outcome.failed.values())
    for key, (image, prediction, verdict) in rows.items():
        assert image.status is ImageStatus.DONE, key
        assert image.failure_reason is None
        assert (image.width, image.height) != (None, None)
        # And their prediction and verdict say no_face, with no score and a reason
        assert (prediction.label, prediction.score, prediction.faces) == (NO_FACE, None, [])
        assert prediction.reason and "no face" in prediction.reason
        assert (verdict.model_label, verdict.final_label, verdict.score) == (
            NO_FACE,
            NO_FACE,
            None,
        )
    assert rows["pixel.png"][0].width == 1
    # And a second delivery of the batch changes nothing
    again = classify_batch(ids, runtime=face_runtime)
    assert (again.classified, again.failed) == ([], {})
    assert set(outcome.classified) <= set(again.skipped)


@pytest.mark.parametrize(
    ("policy", "audit_rate", "state", "reason"),
    [
        ("review", 0.0, ReviewState.OPEN, ReviewReason.NO_FACE),
        ("skip", 1.0, ReviewState.NONE, None),
        ("audit", 1.0, ReviewState.OPEN, ReviewReason.AUDIT),
        ("audit", 0.0, ReviewState.NONE, None),
    ],
)
def test_no_face_verdicts_follow_the_queue_policy(
    face_runtime: Runtime,
    folder: Path,
    policy: str,
    audit_rate: float,
    state: ReviewState,
    reason: ReviewReason | None,
) -> None:
    # Given DEEPSCREEN_REVIEW_NO_FACE=policy (and an audit rate of 0 or 1)
    runtime = with_policy(face_runtime, review_no_face=policy, review_audit_rate=audit_rate)
    write(folder, {k: v for k, v in no_face_images().items() if k != "pixel.png"})
    ids = register(runtime, folder)
    # When the images are classified
    classify_batch(ids, runtime=runtime)
    runtime.close()
    # Then every no_face verdict is queued (or not) as the policy says
    rows = stored(face_runtime, ids)
    assert len(rows) == 5
    assert {(v.state, v.reason) for _, _, v in rows.values()} == {(state, reason)}


def test_the_audit_policy_samples_no_face_verdicts_at_the_audit_rate() -> None:
    # Given the audit policy at a 10 % rate, over many image ids
    from deepscreen.review import review_need

    settings = Settings(review_no_face="audit", review_audit_rate=0.1)
    reasons = [
        review_need(image_id=i, score=None, threshold=0.5, settings=settings).reason
        for i in range(20_000)
    ]
    # Then about 10 % are queued for audit and the rest not at all
    assert 0.09 < reasons.count(ReviewReason.AUDIT) / len(reasons) < 0.11
    assert set(reasons) == {ReviewReason.AUDIT, None}
    # And queued no-face verdicts come after fakes and before audits
    review = replace(settings, review_no_face="review")
    no_face = review_need(image_id=1, score=None, threshold=0.5, settings=review).priority
    fake = review_need(image_id=1, score=0.99, threshold=0.5, settings=review).priority
    audit = review_need(
        image_id=1,
        score=0.01,
        threshold=0.5,
        settings=replace(review, review_band=0.0, review_audit_rate=1.0),
    ).priority
    assert fake > no_face > audit


def test_verdict_created_carries_no_face_its_reason_and_faces(
    face_runtime: Runtime, folder: Path
) -> None:
    # Given an endpoint for verdict.created (and no other endpoint)
    with session_scope(face_runtime.session_factory) as session:
        session.execute(delete(WebhookEvent))
        session.execute(delete(WebhookEndpoint))
        session.add(
            WebhookEndpoint(
                url="http://127.0.0.1:9/hook", secret=new_secret(), event_types=[VERDICT_CREATED]
            )
        )
    write(folder, {"noise.png": no_face_images()["noise.png"]})
    ids = register(face_runtime, folder)
    try:
        # When the image is classified
        outcome = classify_batch(ids, runtime=face_runtime)
        # Then its one event says no_face, with the reason and no faces
        assert len(outcome.deliveries) == 1
        with session_scope(face_runtime.session_factory) as session:
            event = session.scalars(select(WebhookEvent)).one()
            data = json.loads(json.dumps(event.payload))["data"]
    finally:
        with session_scope(face_runtime.session_factory) as session:
            session.execute(delete(WebhookEndpoint))
    assert event.type == VERDICT_CREATED
    assert data["image_id"] == ids[0]
    assert (data["label"], data["final_label"], data["score"], data["faces"]) == (
        NO_FACE,
        NO_FACE,
        None,
        [],
    )
    assert "no face" in data["reason"]
    assert data["review_state"] == "open"  # the default policy reviews them


@requires_shared
def test_faces_found_are_stored_with_their_boxes_and_scores(
    face_runtime: Runtime, folder: Path
) -> None:
    # Given four real and fake face photos from ../shared/data
    images = shared_images(4)
    assert images is not None
    write(folder, images)
    ids = register(face_runtime, folder)
    # When they are classified
    classify_batch(ids, runtime=face_runtime)
    # Then each has at least one face inside the image, and its score is the best face's
    rows = stored(face_runtime, ids)
    assert len(rows) == 4
    for key, (image, prediction, verdict) in rows.items():
        assert prediction.label in ("real", "fake"), key
        assert prediction.reason is None
        faces = prediction.faces or []
        assert faces, key
        for face in faces:
            assert set(face) == {"x0", "y0", "x1", "y1", "confidence", "score"}
            assert 0 <= face["x0"] < face["x1"] <= image.width
            assert 0 <= face["y0"] < face["y1"] <= image.height
            assert 0.5 <= face["confidence"] <= 1
        scores = [f["score"] for f in faces if f["score"] is not None]
        assert prediction.score == pytest.approx(max(scores), abs=1e-6)
        assert verdict.score == prediction.score


def test_a_shadow_without_a_face_stage_scores_the_whole_image_itself(
    face_runtime: Runtime, folder: Path, classifier: Classifier, tmp_path: Path
) -> None:
    # Given the face model active and a whole-image model (no face stage) in shadow
    whole = model_variant(tmp_path / "whole", pad=56)
    with session_scope(face_runtime.session_factory) as session:
        version = registry.publish(whole, settings=face_runtime.settings, session=session)
        registry.set_shadow(session, version.id, True)
        shadow_id = version.id
    try:
        serving = face_runtime.serving()
        assert serving.shadow is not None and not serving.shadow_shares_inputs
        write(folder, {"noise.png": no_face_images()["noise.png"]})
        ids = register(face_runtime, folder)
        # When a batch is classified
        classify_batch(ids, runtime=face_runtime)
        # Then the active model says no_face and the shadow scored the whole image
        with session_scope(face_runtime.session_factory) as session:
            by_version = {
                p.model_version_id: p
                for p in session.scalars(select(Prediction).where(Prediction.image_id == ids[0]))
            }
        shadow_prediction = by_version.pop(shadow_id)
        [active_prediction] = by_version.values()
        assert active_prediction.label == NO_FACE
        assert shadow_prediction.label in ("real", "fake")
        assert shadow_prediction.score is not None and shadow_prediction.faces is None
        # And its score is the whole-image model's own on the same bytes
        expected = classifier.classify_one((folder / "noise.png").read_bytes()).score
        assert shadow_prediction.score == pytest.approx(expected, abs=1e-5)
    finally:
        with session_scope(face_runtime.session_factory) as session:
            session.execute(update(ModelVersion).values(shadow=False))


def test_a_shadow_with_the_same_face_stage_reuses_the_active_inputs(
    face_runtime: Runtime, folder: Path, tmp_path: Path
) -> None:
    # Given a second face-stage model (same stage and input size) in shadow
    twin = model_variant(tmp_path / "twin", pad=64, threshold=0.4, face_stage=FaceStage())
    with session_scope(face_runtime.session_factory) as session:
        version = registry.publish(twin, settings=face_runtime.settings, session=session)
        registry.set_shadow(session, version.id, True)
        shadow_id = version.id
    try:
        assert face_runtime.serving().shadow_shares_inputs
        write(folder, no_face_images())
        ids = register(face_runtime, folder)
        # When a batch is classified
        classify_batch(ids, runtime=face_runtime)
        # Then the shadow also has a no_face prediction per image, and no verdict
        with session_scope(face_runtime.session_factory) as session:
            shadow_rows = session.scalars(
                select(Prediction).where(
                    Prediction.image_id.in_(ids), Prediction.model_version_id == shadow_id
                )
            ).all()
            verdict_versions = set(
                session.scalars(select(Verdict.model_version_id).where(Verdict.image_id.in_(ids)))
            )
        assert len(shadow_rows) == len(ids) == 6
        assert {(p.label, p.score, p.threshold) for p in shadow_rows} == {(NO_FACE, None, 0.4)}
        assert shadow_id not in verdict_versions
    finally:
        with session_scope(face_runtime.session_factory) as session:
            session.execute(update(ModelVersion).values(shadow=False))
