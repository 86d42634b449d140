"""Which verdicts need a human, and the verdict rows the worker writes with predictions.

The policy is configuration (`Settings.review_band`, ``review_fakes``,
``review_audit_rate``, ``review_no_face``): an uncertain band around the model's
threshold, every fake, and a random audit sample of confident reals. A ``no_face``
verdict (no score: the model's face stage found no face) is never queued (``skip``),
sampled like confident reals (``audit``), or always queued (``review``). The audit
sample is a hash of the image id, so a redelivered batch samples the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepscreen.config import Settings
from deepscreen.db.models import Image, Prediction
from deepscreen.db.moderation import ReviewReason, ReviewState, Verdict
from deepscreen.db.queries import insert_ignore

#: The model label of an image in which the face stage found no face: the same string
#: as `deepscreen.inference.NO_FACE`, here so the dashboard reads it without importing
#: the serving code.
NO_FACE = "no_face"


@dataclass(frozen=True)
class ReviewNeed:
    state: ReviewState
    reason: ReviewReason | None
    #: Higher first: uncertain (2-3, nearest the threshold first) > fake (1-2)
    #: > no face (`NO_FACE_PRIORITY`) > audit (`AUDIT_PRIORITY`).
    priority: float


NO_FACE_PRIORITY = 0.75
AUDIT_PRIORITY = 0.5


def audit_draw(image_id: int) -> float:
    """A number in [0, 1) fixed by the image id."""
    digest = hashlib.sha256(f"audit:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def review_need(
    *, image_id: int, score: float | None, threshold: float, settings: Settings
) -> ReviewNeed:
    """Whether the policy sends this verdict to the queue, why, and how urgently.

    ``score`` None is a ``no_face`` verdict, queued as ``settings.review_no_face`` says.
    """
    if score is None:
        if settings.review_no_face == "review":
            return ReviewNeed(ReviewState.OPEN, ReviewReason.NO_FACE, NO_FACE_PRIORITY)
        if settings.review_no_face == "audit" and audit_draw(image_id) < settings.review_audit_rate:
            return ReviewNeed(ReviewState.OPEN, ReviewReason.AUDIT, AUDIT_PRIORITY)
        return ReviewNeed(ReviewState.NONE, None, 0.0)
    distance = abs(score - threshold)
    if settings.review_band > 0 and distance <= settings.review_band:
        return ReviewNeed(
            ReviewState.OPEN, ReviewReason.UNCERTAIN, 2 + 1 - distance / settings.review_band
        )
    if score >= threshold and settings.review_fakes:
        return ReviewNeed(ReviewState.OPEN, ReviewReason.FAKE, 1 + score)
    if score < threshold and audit_draw(image_id) < settings.review_audit_rate:
        return ReviewNeed(ReviewState.OPEN, ReviewReason.AUDIT, AUDIT_PRIORITY)
    return ReviewNeed(ReviewState.NONE, None, 0.0)


def record_verdicts(
    *,
    session: Session,
    image_ids: Sequence[int],
    model_version_id: int,
    settings: Settings,
    now: datetime,
) -> list[int]:
    """Point each image's verdict at its prediction by ``model_version_id``.

    A new verdict follows the review policy. An existing one from another model takes
    the new score; a human decision on it stands (state and final label are kept).
    Running it again for the same predictions changes nothing. Returns the ids of the
    images whose verdict this call inserted or repointed (a ``verdict.created`` each).
    """
    if not image_ids:
        return []
    rows = session.execute(
        select(Prediction, Image.source, Image.created_at)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.image_id.in_(image_ids), Prediction.model_version_id == model_version_id)
    ).all()
    existing = {
        v.image_id: v
        for v in session.scalars(select(Verdict).where(Verdict.image_id.in_(image_ids)))
    }
    new: list[dict[str, object]] = []
    written: list[int] = []
    for prediction, source, image_created_at in rows:
        verdict = existing.get(prediction.image_id)
        if verdict is not None:
            if verdict.prediction_id != prediction.id:
                _repoint(verdict, prediction, settings, now)
                written.append(prediction.image_id)
            continue
        need = review_need(
            image_id=prediction.image_id,
            score=prediction.score,
            threshold=prediction.threshold,
            settings=settings,
        )
        new.append(
            {
                "image_id": prediction.image_id,
                "prediction_id": prediction.id,
                "model_version_id": model_version_id,
                "score": prediction.score,
                "model_label": prediction.label,
                "final_label": prediction.label,
                "source": source,
                "state": need.state,
                "reason": need.reason,
                "priority": need.priority,
                "image_created_at": image_created_at,
                "created_at": now,
                "updated_at": now,
            }
        )
    if new:
        # A concurrent redelivery may have written the same verdict: keep the first.
        written.extend(
            insert_ignore(
                session=session,
                model=Verdict,
                rows=new,
                conflict=("image_id",),
                returning="image_id",
            )
        )
    return sorted(written)


def _repoint(verdict: Verdict, prediction: Prediction, settings: Settings, now: datetime) -> None:
    verdict.prediction_id = prediction.id
    verdict.model_version_id = prediction.model_version_id
    verdict.score = prediction.score
    verdict.model_label = prediction.label
    verdict.updated_at = now
    if verdict.human_label is not None or verdict.state is ReviewState.DECIDED:
        return
    need = review_need(
        image_id=verdict.image_id,
        score=prediction.score,
        threshold=prediction.threshold,
        settings=settings,
    )
    verdict.final_label = prediction.label
    if verdict.state is not ReviewState.ESCALATED:
        verdict.state, verdict.reason, verdict.priority = need.state, need.reason, need.priority
