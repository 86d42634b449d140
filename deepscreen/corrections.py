"""Moderator corrections: the labelled samples retraining learns from.

A correction is an image whose latest human decision (confirm, override or flag)
says the model was wrong: a flag, or an override whose label differs from the
label the model gave the image at the time (its prediction by the model version
the moderator saw). A later decision that agrees with the model withdraws an
earlier one, as it does on the verdict.

`write_manifest` turns corrections into a CSV the training readers accept: ``path``
is the object's store URL (``s3://bucket/key`` or ``file:///...``), read from the
bucket at training time; ``label`` is the corrected label; the other columns say
where the label came from. No TensorFlow here: the dashboard and the CLI use it.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from deepscreen.db.models import Image, ModelVersion, Prediction
from deepscreen.db.moderation import Action, Review, User

#: The ``source`` of correction samples in manifests and model cards.
CORRECTIONS_SOURCE = "corrections"

#: Decisions that set an image's label; the latest one per image counts.
DECIDING_ACTIONS = (Action.CONFIRM, Action.OVERRIDE, Action.FLAG)

MANIFEST_COLUMNS = (
    "path",
    "label",
    "source",
    "reviewer",
    "reviewed_at",
    "action",
    "model_version",
    "model_label",
    "score",
    "review_id",
    "image_id",
)


@dataclass(frozen=True)
class Correction:
    """One image's corrected label and where it came from."""

    review_id: int
    image_id: int
    #: ``images.bucket``: an S3 bucket name or ``file:///root``.
    bucket: str
    key: str
    #: The label the moderator gave.
    label: str
    action: str
    reviewer: str
    reviewed_at: datetime
    #: sha256 of the model version the moderator saw, and its label and score.
    model_version: str | None
    model_label: str | None
    score: float | None

    @property
    def url(self) -> str:
        """The object's store URL: ``s3://bucket/key`` or ``file:///root/key``."""
        return object_url(self.bucket, self.key)


def object_url(bucket: str, key: str) -> str:
    """A store URL for ``key`` in ``bucket`` (an ``images.bucket`` value)."""
    if bucket.startswith("file://"):
        return bucket.rstrip("/") + "/" + quote(key, safe="/")
    return f"s3://{bucket}/{key}"


def _corrections_query(after_review_id: int | None) -> Select[tuple[int]]:
    """Ids of the reviews that are corrections, oldest first."""
    ranked = (
        select(
            Review.id.label("review_id"),
            func.row_number()
            .over(
                partition_by=Review.image_id, order_by=(Review.created_at.desc(), Review.id.desc())
            )
            .label("rank"),
        )
        .where(Review.action.in_(DECIDING_ACTIONS))
        .subquery()
    )
    stmt = (
        select(Review.id)
        .join(ranked, and_(ranked.c.review_id == Review.id, ranked.c.rank == 1))
        .outerjoin(
            Prediction,
            and_(
                Prediction.image_id == Review.image_id,
                Prediction.model_version_id == Review.model_version_id,
            ),
        )
        .where(
            Review.label.is_not(None),
            or_(
                Review.action == Action.FLAG,
                and_(Review.action == Action.OVERRIDE, Review.label != Prediction.label),
            ),
        )
        .order_by(Review.id)
    )
    if after_review_id is not None:
        stmt = stmt.where(Review.id > after_review_id)
    return stmt


def corrections(*, session: Session, after_review_id: int | None = None) -> list[Correction]:
    """Every current correction (only those decided after ``after_review_id``, if
    given), oldest first."""
    ids = _corrections_query(after_review_id).subquery()
    rows = session.execute(
        select(
            Review, Image.bucket, Image.key, User.username, ModelVersion.sha256, Prediction.label
        )
        .join(ids, ids.c.id == Review.id)
        .join(Image, Image.id == Review.image_id)
        .join(User, User.id == Review.user_id)
        .outerjoin(ModelVersion, ModelVersion.id == Review.model_version_id)
        .outerjoin(
            Prediction,
            and_(
                Prediction.image_id == Review.image_id,
                Prediction.model_version_id == Review.model_version_id,
            ),
        )
        .order_by(Review.id)
    ).all()
    return [
        Correction(
            review_id=review.id,
            image_id=review.image_id,
            bucket=bucket,
            key=key,
            label=str(review.label),
            action=review.action.value,
            reviewer=username,
            reviewed_at=review.created_at,
            model_version=sha256,
            model_label=model_label,
            score=review.score,
        )
        for review, bucket, key, username, sha256, model_label in rows
    ]


def count_corrections(*, session: Session, after_review_id: int | None = None) -> int:
    """How many corrections `corrections` would return."""
    query = _corrections_query(after_review_id).subquery()
    return int(session.scalar(select(func.count()).select_from(query)) or 0)


def write_manifest(samples: Sequence[Correction], path: Path) -> int:
    """Write ``samples`` as a training CSV manifest (atomically); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(MANIFEST_COLUMNS)
            for c in samples:
                writer.writerow(
                    [
                        c.url,
                        c.label,
                        CORRECTIONS_SOURCE,
                        c.reviewer,
                        c.reviewed_at.isoformat(),
                        c.action,
                        c.model_version or "",
                        c.model_label or "",
                        "" if c.score is None else repr(float(c.score)),
                        c.review_id,
                        c.image_id,
                    ]
                )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(samples)
