"""The reconciler: the database, not the broker, decides what still needs doing.

An image queued or processing for longer than ``settings.reconcile_after`` has
lost its message (a Redis restart, a killed worker, an enqueue that never
happened after a crash): it is enqueued again. An image that has already used
up its attempts fails with "gave up after N attempts" instead, so a message that
keeps killing workers cannot loop for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import ImageStatus
from deepscreen.db.session import session_scope
from worker.classify import gave_up, max_attempts

logger = logging.getLogger(__name__)

#: Images handled per run; the next run takes the rest.
RECONCILE_LIMIT = 10_000


@dataclass
class ReconcileOutcome:
    requeued: list[int] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)
    #: Classify tasks sent for the requeued images.
    tasks: int = 0

    def counts(self) -> dict[str, int]:
        return {"requeued": len(self.requeued), "gave_up": len(self.gave_up), "tasks": self.tasks}


def reconcile(
    *,
    settings: Settings,
    session_factory: sessionmaker[Session],
    enqueue: Callable[[Sequence[int]], int],
    now: datetime | None = None,
    limit: int = RECONCILE_LIMIT,
) -> ReconcileOutcome:
    """Re-enqueue stale images (after committing), fail the ones out of attempts.

    ``enqueue(ids)`` sends classify tasks and returns how many; it is called only
    after the transaction that re-queued the images has committed.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.reconcile_after)
    bound = max_attempts(settings)
    outcome = ReconcileOutcome()
    with session_scope(session_factory) as session:
        for image in queries.find_stale_images(session=session, before=cutoff, limit=limit):
            if image.attempts >= bound:
                image.status = ImageStatus.FAILED
                image.failure_reason = gave_up(image.attempts)
                image.finished_at = now
                outcome.gave_up.append(image.id)
            else:
                image.status = ImageStatus.QUEUED
                image.queued_at = now
                outcome.requeued.append(image.id)
    if outcome.requeued:
        outcome.tasks = enqueue(outcome.requeued)
    if outcome.requeued or outcome.gave_up:
        logger.warning(
            "reconcile: re-enqueued images %s, gave up on images %s",
            _ids(outcome.requeued),
            _ids(outcome.gave_up),
        )
    return outcome


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids)) or "none"
