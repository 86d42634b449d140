"""How a model that is not the active one agrees with it, and with the moderators, on
the images both scored: what a shadow run is judged by before a promotion.

One query: the model's predictions (``ix_predictions_model_version_id``) joined to the
active model's prediction of the same image (the unique ``(image_id,
model_version_id)`` index) and to the image's verdict (unique ``image_id``) when a
human decided it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.orm import Session, aliased

from deepscreen.db.models import Prediction
from deepscreen.db.moderation import Verdict


@dataclass(frozen=True)
class Agreement:
    """A model against the active one on the images both scored."""

    model_id: int
    active_id: int
    #: Images scored by both models.
    n: int
    #: Images where both gave the same label.
    same_label: int
    #: Mean of |score - active score| (None when ``n`` is 0).
    mean_abs_score_diff: float | None
    #: Of the ``n`` images, those a human decided.
    n_human: int
    #: Of those, where this model's label is the human's.
    model_matches_human: int
    #: Of the same images, where the active model's label is the human's.
    active_matches_human: int

    @property
    def label_agreement(self) -> float | None:
        return self.same_label / self.n if self.n else None

    @property
    def model_human_share(self) -> float | None:
        return self.model_matches_human / self.n_human if self.n_human else None

    @property
    def active_human_share(self) -> float | None:
        return self.active_matches_human / self.n_human if self.n_human else None


def agreement(*, session: Session, model_id: int, active_id: int) -> Agreement:
    """Compare ``model_id``'s predictions with ``active_id``'s, and both with the human
    decisions, over the images both models scored."""
    mine, theirs = aliased(Prediction), aliased(Prediction)
    stmt = (
        select(
            func.count(),
            _count_if(mine.label == theirs.label),
            func.avg(func.abs(mine.score - theirs.score)),
            func.count(Verdict.id),
            _count_if(mine.label == Verdict.human_label),
            _count_if(theirs.label == Verdict.human_label),
        )
        .select_from(mine)
        .join(
            theirs,
            and_(theirs.image_id == mine.image_id, theirs.model_version_id == active_id),
        )
        .outerjoin(
            Verdict,
            and_(Verdict.image_id == mine.image_id, Verdict.human_label.is_not(None)),
        )
        .where(mine.model_version_id == model_id)
    )
    n, same, diff, n_human, model_human, active_human = session.execute(stmt).one()
    return Agreement(
        model_id=model_id,
        active_id=active_id,
        n=int(n),
        same_label=int(same),
        mean_abs_score_diff=None if diff is None else float(diff),
        n_human=int(n_human),
        model_matches_human=int(model_human),
        active_matches_human=int(active_human),
    )


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
