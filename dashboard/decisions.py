"""What a human decision does to a verdict: the review row, the new state and final
label, the retraining flag, the released claim, and the audit event.

The final label of an image is the human decision when one exists. A flag marks the
model's verdict as a misclassification and records the corrected label, which is
what the retraining job reads.

A decision (confirm, override, flag) emits the ``review.completed`` webhook event,
and ``verdict.changed`` too when it changes the final label (a human overriding the
model, or going back on an earlier override). The deliveries are written in the
caller's transaction and sent to the workers after it commits (`outbox`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from flask import g
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from dashboard import audit, outbox
from dashboard.accounts import isoformat
from dashboard.filters import VerdictFilter
from deepscreen import webhooks
from deepscreen.db.moderation import Action, Review, ReviewState, User, Verdict
from deepscreen.db.webhooks import WebhookEndpoint

#: Labels when a model card names none.
DEFAULT_LABELS = ("real", "fake")

#: Actions a moderator may apply to a whole filtered selection.
BULK_ACTIONS = frozenset({Action.CONFIRM, Action.OVERRIDE, Action.ESCALATE})

#: Items changed per statement batch in a bulk action.
BULK_CHUNK = 500

#: Actions that complete a review (and so emit ``review.completed``).
DECIDING_ACTIONS = frozenset({Action.CONFIRM, Action.OVERRIDE, Action.FLAG})


class InvalidDecision(ValueError):
    """The action does not fit the request (a missing or unknown label, say)."""


def labels_of(verdict: Verdict | None) -> tuple[str, ...]:
    """The labels a human may choose for this verdict: the model card's."""
    if verdict is None or verdict.model_version is None:
        return DEFAULT_LABELS
    labels = (verdict.model_version.card or {}).get("labels")
    return tuple(labels) if isinstance(labels, list) and labels else DEFAULT_LABELS


def _state(verdict: Verdict) -> dict[str, Any]:
    return {
        "state": verdict.state.value,
        "final_label": verdict.final_label,
        "human_label": verdict.human_label,
        "flagged": verdict.flagged,
        "flag_label": verdict.flag_label,
    }


def apply(
    session: Session,
    verdict: Verdict,
    action: Action,
    *,
    user: User,
    label: str | None,
    note: str | None,
    now: datetime,
    audited: bool = True,
) -> Review:
    """Apply one decision by ``user`` to ``verdict`` (in ``session``; the caller commits)."""
    labels = labels_of(verdict)
    before = _state(verdict)
    if action is Action.CONFIRM:
        label = verdict.model_label
    elif action in (Action.OVERRIDE, Action.FLAG):
        if label not in labels:
            raise InvalidDecision(f"{action.value} needs a label, one of: {', '.join(labels)}")
    elif action is Action.NOTE:
        if not note:
            raise InvalidDecision("a note needs text")
        label = None
    else:
        label = None
    if action in DECIDING_ACTIONS:
        assert label is not None
        verdict.human_label = verdict.final_label = label
        verdict.state = ReviewState.DECIDED
        verdict.decided_at = now
    if action is Action.FLAG:
        verdict.flagged, verdict.flag_label = True, label
    elif action in (Action.CONFIRM, Action.OVERRIDE):
        # A later decision that agrees with the model withdraws an earlier flag.
        verdict.flagged = label != verdict.model_label and verdict.flagged
        verdict.flag_label = verdict.flag_label if verdict.flagged else None
    if action is Action.ESCALATE:
        verdict.state = ReviewState.ESCALATED
    if action is not Action.NOTE:
        verdict.claimed_by = verdict.claim_expires_at = None
    verdict.updated_at = now
    review = Review(
        image_id=verdict.image_id,
        user_id=user.id,
        action=action,
        label=label,
        note=note,
        model_version_id=verdict.model_version_id,
        score=verdict.score,
        created_at=now,
    )
    session.add(review)
    if action in DECIDING_ACTIONS:
        _announce(session, verdict, action, before["final_label"], user=user, now=now)
    if audited:
        after = _state(verdict)
        if note:
            after["note"] = note
        audit.record(
            f"review.{action.value}",
            target_type="image",
            target_id=verdict.image_id,
            before=before,
            after=after,
        )
    return review


def apply_bulk(
    session: Session,
    filters: VerdictFilter,
    action: Action,
    *,
    ids: Sequence[int],
    user: User,
    label: str | None,
    now: datetime,
) -> int:
    """Apply ``action`` to the verdicts ``ids`` (the selection the moderator confirmed)
    that the filters still select; returns how many.

    Each item gets its own review row (its history stays complete); one audit event
    for the whole selection is written by the caller.
    """
    if action not in BULK_ACTIONS:
        raise InvalidDecision(f"{action.value} is not a bulk action")
    done = 0
    ordered = sorted(ids)
    for start in range(0, len(ordered), BULK_CHUNK):
        stmt = (
            filters.apply(select(Verdict))
            .where(Verdict.id.in_(ordered[start : start + BULK_CHUNK]))
            .order_by(Verdict.id)
            .with_for_update()
            # Event payloads name each image's bucket and key: one query per chunk.
            .options(selectinload(Verdict.image))
        )
        chunk = list(session.scalars(stmt))
        for verdict in chunk:
            apply(
                session, verdict, action, user=user, label=label, note=None, now=now, audited=False
            )
        done += len(chunk)
        session.flush()
    return done


def _announce(
    session: Session,
    verdict: Verdict,
    action: Action,
    before_label: str,
    *,
    user: User,
    now: datetime,
) -> None:
    """Emit ``review.completed`` (and ``verdict.changed`` when the final label moved)
    and have the deliveries sent after the commit."""
    wanted = _listened_types(session)
    changed = verdict.final_label != before_label
    if webhooks.REVIEW_COMPLETED not in wanted and not (
        changed and webhooks.VERDICT_CHANGED in wanted
    ):
        return
    model = verdict.model_version
    data: dict[str, Any] = {
        "image_id": verdict.image_id,
        "bucket": verdict.image.bucket,
        "key": verdict.image.key,
        "action": action.value,
        "label": verdict.human_label,
        "final_label": verdict.final_label,
        "model_label": verdict.model_label,
        "score": verdict.score,
        "model_version": {"id": model.id, "name": model.name, "sha256": model.sha256},
        "reviewer": user.username,
        "decided_at": isoformat(verdict.decided_at),
    }
    ids = []
    if webhooks.REVIEW_COMPLETED in wanted:
        ids += webhooks.emit(
            session, webhooks.REVIEW_COMPLETED, data, now=now, image_id=verdict.image_id
        )
    if changed and webhooks.VERDICT_CHANGED in wanted:
        ids += webhooks.emit(
            session,
            webhooks.VERDICT_CHANGED,
            {
                **data,
                "before": {"final_label": before_label},
                "after": {"final_label": verdict.final_label},
            },
            now=now,
            image_id=verdict.image_id,
        )
    outbox.after_commit(deliveries=ids)


def _listened_types(session: Session) -> frozenset[str]:
    """Event types some active endpoint takes, looked up once per request: a bulk
    decision over thousands of items with no endpoint listening costs one query."""
    cached: frozenset[str] | None = g.get("webhook_types")
    if cached is None:
        rows = session.scalars(
            select(WebhookEndpoint.event_types).where(WebhookEndpoint.active.is_(True))
        )
        cached = g.webhook_types = frozenset(t for types in rows for t in (types or []))
    return cached
