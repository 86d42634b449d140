"""Starting retraining runs: the rows the training worker claims, and the
new-corrections trigger.

A run is a `TrainingRun` row first, committed as ``queued``, and a
``deepscreen.retrain`` task (sent by name, after the commit) second. The dashboard's
"retrain" button and the ``deepscreen.check_retrain`` task both go through
`request_run`; the training worker (``training.retrain``) claims a queued row, so a
redelivered message never trains twice. No TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.corrections import count_corrections
from deepscreen.db.base import utcnow
from deepscreen.db.retraining import RunStatus, RunTrigger, TrainingRun
from deepscreen.db.session import session_scope

logger = logging.getLogger(__name__)

#: Runs that are waiting for, or taking, the training worker.
PENDING = (RunStatus.QUEUED, RunStatus.RUNNING)


def pending_run(*, session: Session) -> TrainingRun | None:
    """The oldest queued or running run, if any."""
    return session.scalars(
        select(TrainingRun)
        .where(TrainingRun.status.in_(PENDING))
        .order_by(TrainingRun.created_at, TrainingRun.id)
        .limit(1)
    ).first()


def last_review_id(*, session: Session) -> int | None:
    """The highest review id any run so far included (failed and refused runs too, so
    a failing run is not retried on every check: the schedule or new corrections are)."""
    return session.scalar(select(func.max(TrainingRun.last_review_id)))


def new_corrections(*, session: Session) -> int:
    """Corrections decided after the last run's ``last_review_id``."""
    return count_corrections(session=session, after_review_id=last_review_id(session=session))


def request_run(
    *,
    session: Session,
    trigger: RunTrigger,
    requested_by: int | None = None,
    now: datetime | None = None,
) -> TrainingRun:
    """Add a queued run (the caller commits, then sends ``deepscreen.retrain`` with
    ``[trigger, run.id]``)."""
    run = TrainingRun(
        trigger=trigger,
        status=RunStatus.QUEUED,
        requested_by=requested_by,
        created_at=now or utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def check_retrain(
    *,
    settings: Settings,
    session_factory: sessionmaker[Session],
    send: Callable[[int], object],
    now: datetime | None = None,
) -> int | None:
    """Queue a run when ``settings.retrain_min_corrections`` new corrections exist and
    no run is queued or running (and ``settings.retrain_data`` names base data);
    returns the id of the run sent, if any.

    ``send(run_id)`` sends the retrain task after the commit. A run left queued
    longer than ``settings.reconcile_age`` while none runs lost its message (the
    broker was down when it was sent, say): it is sent again, which is harmless,
    since only one delivery can claim a queued run.
    """
    if not settings.retrain_min_corrections or not settings.retrain_data:
        return None  # trigger off, or no base data (a run would fail at once)
    now = now or utcnow()
    with session_scope(session_factory) as session:
        pending = pending_run(session=session)
        if pending is not None:
            stale = now - pending.created_at > timedelta(seconds=settings.reconcile_age)
            if pending.status is RunStatus.QUEUED and stale and not _running(session):
                logger.warning(
                    "retraining run %d queued since %s: sent again", pending.id, pending.created_at
                )
                run_id = pending.id
            else:
                logger.debug("retraining run %d is %s: no new run", pending.id, pending.status)
                return None
        else:
            count = new_corrections(session=session)
            if count < settings.retrain_min_corrections:
                logger.debug(
                    "%d new corrections, a run needs %d", count, settings.retrain_min_corrections
                )
                return None
            run_id = request_run(session=session, trigger=RunTrigger.CORRECTIONS, now=now).id
            logger.info("retraining run %d queued for %d new corrections", run_id, count)
    send(run_id)
    return run_id


def _running(session: Session) -> bool:
    stmt = select(TrainingRun.id).where(TrainingRun.status == RunStatus.RUNNING).limit(1)
    return session.scalar(stmt) is not None


def fail_interrupted_runs(*, session_factory: sessionmaker[Session]) -> list[int]:
    """Mark runs left ``running`` as failed; returns their ids.

    Called by the training worker as it starts: there is one, so a run still
    running then was interrupted (the worker was stopped or crashed mid-run).
    """
    with session_scope(session_factory) as session:
        runs = list(
            session.scalars(
                select(TrainingRun).where(TrainingRun.status == RunStatus.RUNNING).with_for_update()
            )
        )
        for run in runs:
            run.status, run.finished_at = RunStatus.FAILED, utcnow()
            run.error = "interrupted: the training worker stopped during the run"
            logger.warning("retraining run %d was interrupted: marked failed", run.id)
        return [run.id for run in runs]
