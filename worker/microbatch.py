"""Micro-batching: images registered a few at a time are classified together.

Bucket events, submissions and small scans queue images one (or a few) at a time.
Such a registration sends a ``classify_pending`` message, a wake-up rather than a unit
of work: the worker that takes it claims *whatever is queued* when it is free, oldest
first, up to ``classify_batch_size``, in one transaction (``FOR UPDATE SKIP LOCKED``,
so two workers claiming at once take different images). At idle that is the one
image that sent the message, at once: nothing waits for company. Under load the
images that arrived while both workers were busy go together. On Redis a
registration sends no wake-up while another one waits untaken
(`deepscreen.taskqueue.wake_up`): that one's claim will include its image.

Guarantees are those of `worker.classify`: the database is the source of truth and
every step is idempotent. A message is never the only record of an image: it stays
queued until a worker claims it. No queued image is left without a message on its
way, because a wake-up that claimed a full batch sends another one after its commit
(more may be waiting), and one that claimed less took every image it could see.
Images a micro-batch claimed are marked with its task id (``images.claimed_by``): a
redelivered or retried message, which keeps its task id, takes them back; any other
task leaves them alone until the hard time limit has passed, and the reconciler
re-queues whatever a killed worker left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from deepscreen.db import queries
from deepscreen.db.models import Image
from deepscreen.errors import TransientError
from worker.classify import BatchOutcome, classify_selected
from worker.runtime import Runtime

logger = logging.getLogger(__name__)


def classify_pending(
    *,
    runtime: Runtime,
    final_attempt: bool = False,
    task_id: str = "-",
    enqueue_deliveries: Callable[[Sequence[int]], object] | None = None,
    wake: Callable[[], object] | None = None,
    taken: Callable[[], object] | None = None,
) -> BatchOutcome:
    """Claim and classify the images queued now (and those ``task_id`` already holds),
    up to the batch size; see `worker.classify.classify_batch` for the rest.

    ``wake()`` sends another wake-up, called as soon as the claim has committed when
    the batch came back full: more images may be waiting, and another worker can start
    on them while this one classifies. ``taken()`` runs first, before the claim: it
    tells senders that this wake-up is taken, so the next image sends a new one
    (`deepscreen.taskqueue.wake_up`).
    """
    if taken is not None:
        try:
            taken()
        except TransientError as exc:  # the key expires on its own
            logger.warning("task %s: cannot mark the wake-up taken: %s", task_id, exc)
    size = runtime.settings.classify_batch_size
    full = False

    def select_images(session: Session, outcome: BatchOutcome) -> list[Image]:
        nonlocal full
        own, queued = queries.get_pending_images_for_update(
            session=session, limit=size, task_id=task_id
        )
        full = len(own) + len(queued) >= size and bool(queued)
        images = own + queued
        outcome.images.extend(image.id for image in images)
        return images

    def send_wake_up() -> None:
        if not full or wake is None:
            return
        try:
            wake()
        except TransientError as exc:
            logger.warning(
                "task %s: a full batch sent no wake-up, the reconciler will: %s", task_id, exc
            )

    return classify_selected(
        select_images,
        runtime=runtime,
        final_attempt=final_attempt,
        task_id=task_id,
        enqueue_deliveries=enqueue_deliveries,
        after_claim=send_wake_up,
    )
