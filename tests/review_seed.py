"""Seeding for the corrections and retraining tests: images in a folder bucket, a
model's predictions and verdicts on them (through the worker's own kernel code), and
moderators' decisions inserted as `Review` rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import ImageSource, ModelStatus, ModelVersion
from deepscreen.db.moderation import Action, Review, Role, User
from deepscreen.db.session import session_scope
from deepscreen.review import record_verdicts
from deepscreen.storage import LocalStore, ObjectInfo

#: The seeded model's sha256: a model that served before and is retired now.
OLD_MODEL_SHA = "ab" * 32


@dataclass
class Item:
    """One image, the old model's score on it (threshold 0.5) and the decisions
    moderators took on it, in order: (action, label, username)."""

    key: str
    data: bytes
    score: float
    decisions: list[tuple[Action, str | None, str]] = field(default_factory=list)


@dataclass
class SeededReviews:
    folder: Path
    model_version_id: int
    image_ids: dict[str, int]
    #: Review ids in insertion order, per key.
    review_ids: dict[str, list[int]]


def _user(session: Session, username: str) -> User:
    user = session.query(User).filter_by(username=username).one_or_none()
    if user is None:
        user = User(
            username=username, password_hash="x", role=Role.MODERATOR, session_token=username
        )
        session.add(user)
        session.flush()
    return user


def seed_reviews(
    factory: sessionmaker[Session], settings: Settings, folder: Path, items: list[Item]
) -> SeededReviews:
    """Write the images into ``folder`` (a bucket of its own), register and predict
    them with the retired old model, and insert the decisions as reviews."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        (folder / item.key).write_bytes(item.data)
    store = LocalStore(folder)
    now = utcnow() - timedelta(hours=1)
    with session_scope(factory) as session:
        model = session.query(ModelVersion).filter_by(sha256=OLD_MODEL_SHA).one_or_none()
        if model is None:
            model = ModelVersion(
                sha256=OLD_MODEL_SHA,
                name="old-model",
                location=str(folder),
                card={"threshold": 0.5, "labels": ["real", "fake"]},
                active=False,
                status=ModelStatus.RETIRED,
            )
            session.add(model)
            session.flush()
        objects = [ObjectInfo(store.bucket, i.key, f"etag-{i.key}", 10, now) for i in items]
        ids = queries.register_images(
            session=session, objects=objects, source=ImageSource.SCAN, now=now
        )
        by_key = dict(zip([i.key for i in items], ids, strict=True))
        queries.add_predictions(
            session=session,
            rows=[
                {
                    "image_id": by_key[i.key],
                    "model_version_id": model.id,
                    "score": i.score,
                    "label": "fake" if i.score >= 0.5 else "real",
                    "threshold": 0.5,
                    "inference_ms": 1.0,
                    "created_at": now,
                }
                for i in items
            ],
        )
        record_verdicts(
            session=session, image_ids=ids, model_version_id=model.id, settings=settings, now=now
        )
        reviews: dict[str, list[int]] = {}
        step = 0
        for item in items:
            for action, label, username in item.decisions:
                step += 1
                review = Review(
                    image_id=by_key[item.key],
                    user_id=_user(session, username).id,
                    action=action,
                    label=label,
                    model_version_id=model.id,
                    score=item.score,
                    created_at=now + timedelta(seconds=step),
                )
                session.add(review)
                session.flush()
                reviews.setdefault(item.key, []).append(review.id)
        return SeededReviews(folder, model.id, by_key, reviews)
