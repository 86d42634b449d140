"""The reconciler: the database, not the broker, decides what still needs doing.

An image processing for longer than ``settings.reconcile_age`` (derived from the
task time limit, after which its task is dead) was taken by a worker that died: it
is enqueued again. An image queued that long has lost its message (a Redis
restart, an enqueue that never happened after a crash) if the classify queue is
empty; while the queue holds messages it may simply be waiting its turn, so it is
left alone until the backlog has drained (a long backlog is not enqueued twice). An
image that has already used up its attempts fails with "gave up after N attempts"
instead, so a message that keeps killing workers cannot loop for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from deepscreen import taskqueue
from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import ImageStatus
from deepscreen.db.session import session_scope
from worker.classify import gave_up, max_attempts
from worker.metrics import queue_depths

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
    waiting_messages: Callable[[], int | None] | None = None,
    now: datetime | None = None,
    limit: int = RECONCILE_LIMIT,
) -> ReconcileOutcome:
    """Re-enqueue stale images (after committing), fail the ones out of attempts.

    ``enqueue(ids)`` sends classify tasks and returns how many; it is called only
    after the transaction that re-queued the images has committed.
    ``waiting_messages()`` counts the messages in the classify queue (None: unknown);
    stale queued images are enqueued again only when it is 0 or unknown.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.reconcile_age)
    bound = max_attempts(settings)
    backlog = waiting_messages() if waiting_messages is not None else None
    outcome = ReconcileOutcome()
    with session_scope(session_factory) as session:
        stale = queries.find_stale_images(
            session=session, before=cutoff, limit=limit, queued=not backlog
        )
        for image in stale:
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


def waiting_classify_messages(settings: Settings) -> int | None:
    """Messages waiting in the classify queue (not those a worker holds); None when
    the broker cannot tell (unreachable, or a kind whose queues are not counted)."""
    try:
        depths = queue_depths(settings)
    except (RedisError, OSError) as exc:
        logger.warning("reconcile: cannot count the classify queue: %s", exc)
        return None
    return depths.get(taskqueue.CLASSIFY_QUEUE)


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids)) or "none"
