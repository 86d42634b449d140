"""The webhook events the worker emits: ``verdict.created`` for each new model verdict.

Emitted in the transaction that writes the verdicts, so an event exists exactly when
its verdict does; the delivery ids are enqueued after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepscreen.db.models import Image, Prediction
from deepscreen.db.moderation import Verdict
from deepscreen.webhooks import VERDICT_CREATED, emit_many, interested_endpoints


def verdict_payload(
    image: Image, verdict: Verdict, prediction: Prediction, *, model_sha256: str, now: datetime
) -> dict[str, Any]:
    """The ``data`` of a ``verdict.created`` event (documented in docs/webhooks.md)."""
    return {
        "image_id": image.id,
        "bucket": image.bucket,
        "key": image.key,
        "etag": image.etag,
        "sha256": image.sha256,
        "score": prediction.score,
        "label": prediction.label,
        "reason": prediction.reason,
        "faces": prediction.faces,
        "threshold": prediction.threshold,
        "model_version": model_sha256,
        "final_label": verdict.final_label,
        "review_state": verdict.state.value,
        "classified_at": now.isoformat(),
    }


def emit_verdicts_created(
    session: Session,
    *,
    image_ids: Sequence[int],
    model_version_id: int,
    model_sha256: str,
    now: datetime,
) -> list[int]:
    """One ``verdict.created`` per image in ``image_ids``; returns the delivery ids.

    Call with the images whose verdict `deepscreen.review.record_verdicts` just wrote,
    after their sha256 and status are set, in the same transaction. A batch costs one
    query when no endpoint wants the event (the usual case), else four: endpoints,
    images with their verdicts, one insert of events, one of deliveries.
    """
    if not image_ids:
        return []
    endpoints = interested_endpoints(session, VERDICT_CREATED, image_ids)
    if not endpoints:
        return []
    rows = session.execute(
        select(Image, Verdict, Prediction)
        .join(Verdict, Verdict.image_id == Image.id)
        .join(
            Prediction,
            (Prediction.image_id == Image.id) & (Prediction.model_version_id == model_version_id),
        )
        .where(Image.id.in_(image_ids))
        .order_by(Image.id)
    ).all()
    items = [
        (image.id, verdict_payload(image, verdict, prediction, model_sha256=model_sha256, now=now))
        for image, verdict, prediction in rows
    ]
    return emit_many(session, VERDICT_CREATED, items, now=now, endpoints=endpoints)
