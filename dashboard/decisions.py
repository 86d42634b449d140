"""What a human decision does to a verdict: the review row, the new state and final
label, the retraining flag, the released claim, and the audit event.

The final label of an image is the human decision when one exists. A flag marks the
model's verdict as a misclassification and records the corrected label, which is
what the retraining job reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dashboard import audit
from dashboard.filters import VerdictFilter
from deepscreen.db.moderation import Action, Review, ReviewState, User, Verdict

#: Labels when a model card names none.
DEFAULT_LABELS = ("real", "fake")

#: Actions a moderator may apply to a whole filtered selection.
BULK_ACTIONS = frozenset({Action.CONFIRM, Action.OVERRIDE, Action.ESCALATE})

#: Items changed per statement batch in a bulk action.
BULK_CHUNK = 500


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
    if action in (Action.CONFIRM, Action.OVERRIDE, Action.FLAG):
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
    user: User,
    label: str | None,
    now: datetime,
) -> int:
    """Apply ``action`` to every verdict the filters select; returns how many.

    Each item gets its own review row (its history stays complete); one audit event
    for the whole selection is written by the caller.
    """
    if action not in BULK_ACTIONS:
        raise InvalidDecision(f"{action.value} is not a bulk action")
    done = 0
    last_id = 0
    while True:
        stmt = (
            filters.apply(select(Verdict))
            .where(Verdict.id > last_id)
            .order_by(Verdict.id)
            .limit(BULK_CHUNK)
            .with_for_update()
        )
        chunk = list(session.scalars(stmt))
        if not chunk:
            return done
        for verdict in chunk:
            apply(
                session, verdict, action, user=user, label=label, note=None, now=now, audited=False
            )
        done += len(chunk)
        last_id = chunk[-1].id
        session.flush()
