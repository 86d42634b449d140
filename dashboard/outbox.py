"""Work the dashboard hands to the workers: classify batches and webhook deliveries,
sent by task *name* once the request's transaction has committed.

A view (or a function it calls) says what to send with `after_commit`; the ids are
kept on the request (``g``) and sent by a listener on the request's session when it
commits, and dropped if it rolls back, so a worker never gets an id whose row is not
there yet. A broker that cannot be reached is logged and nothing else: the rows stay
queued (images) or pending (deliveries), and the reconciler or the periodic webhook
dispatcher sends them later.

The Celery app used for sending is made once per Flask app, on first use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from celery import Celery
from flask import current_app, g
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from dashboard import db
from deepscreen import taskqueue
from deepscreen.errors import TransientError

logger = logging.getLogger(__name__)

CELERY_EXTENSION = "deepscreen.celery"

#: Deliveries sent straight after a commit; beyond this (a large bulk decision) the
#: periodic dispatcher sends the rest within seconds, and the request stays quick.
MAX_IMMEDIATE_DELIVERIES = 200

_lock = threading.Lock()


@dataclass
class _Pending:
    classify: list[int] = field(default_factory=list)
    deliveries: list[int] = field(default_factory=list)


def celery_app() -> Celery:
    """This Flask app's Celery app (made on first use, then shared by its threads)."""
    extensions = current_app.extensions
    celery: Celery | None = extensions.get(CELERY_EXTENSION)
    if celery is None:
        with _lock:
            celery = extensions.get(CELERY_EXTENSION)
            if celery is None:
                celery = extensions[CELERY_EXTENSION] = taskqueue.create_celery(db.settings())
    return celery


def after_commit(*, classify: Sequence[int] = (), deliveries: Sequence[int] = ()) -> None:
    """Send classify tasks for ``classify`` (image ids) and one delivery task per id in
    ``deliveries`` when this request's session next commits."""
    pending = _pending()
    pending.classify.extend(int(i) for i in classify)
    pending.deliveries.extend(int(i) for i in deliveries)


def _pending() -> _Pending:
    pending: _Pending | None = g.get("outbox")
    if pending is None:
        pending = g.outbox = _Pending()
        session = db.session()
        event.listen(session, "after_commit", _send)
        event.listen(session, "after_soft_rollback", _drop)
    return pending


def _drop(session: Session, previous_transaction: SessionTransaction) -> None:
    pending: _Pending | None = g.get("outbox")
    if pending is not None and (pending.classify or pending.deliveries):
        logger.info(
            "rolled back: not sending %d classify ids and %d deliveries",
            len(pending.classify),
            len(pending.deliveries),
        )
        g.outbox = _Pending()


def _send(session: Session) -> None:
    pending: _Pending | None = g.get("outbox")
    if pending is None or not (pending.classify or pending.deliveries):
        return
    g.outbox = _Pending()
    celery = celery_app()
    if pending.classify:
        try:
            taskqueue.enqueue_classify(
                celery, pending.classify, batch_size=db.settings().classify_batch_size
            )
        except TransientError as exc:
            logger.warning(
                "images %s stay queued for the reconciler: %s", pending.classify[:20], exc
            )
    deliveries = pending.deliveries[:MAX_IMMEDIATE_DELIVERIES]
    if len(pending.deliveries) > len(deliveries):
        logger.info(
            "%d deliveries left to the periodic dispatcher",
            len(pending.deliveries) - len(deliveries),
        )
    if deliveries:
        try:
            taskqueue.enqueue_deliveries(celery, deliveries)
        except TransientError as exc:
            logger.warning(
                "deliveries %s stay pending for the dispatcher: %s", deliveries[:20], exc
            )
