"""Training runs: every retraining run with its trigger, data, outcome and gate report
(viewers and up), and the admin's "Retrain now".

A run is started the way every trigger starts one (`deepscreen.retraining`): a
``queued`` `TrainingRun` row is committed first, then ``deepscreen.retrain`` is sent
*by name* with ``["manual", run_id]`` to the ``training`` queue, where the one worker
with TensorFlow claims the row. The dashboard never imports training code.

If the broker cannot be reached the run is marked failed, with that as its error, so
it neither waits forever for a message that was never sent nor blocks the next
"Retrain now" (only one run may be queued or running).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from sqlalchemy import select, update
from werkzeug.wrappers import Response

from dashboard import audit, db, outbox
from dashboard.auth import login_required
from dashboard.filters import id_arg
from deepscreen import taskqueue
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import Role, User
from deepscreen.db.retraining import RunStatus, RunTrigger, TrainingRun
from deepscreen.errors import TransientError
from deepscreen.retraining import new_corrections, pending_run, request_run

logger = logging.getLogger(__name__)

bp = Blueprint("retraining", __name__, url_prefix="/models")

PAGE_SIZE = 50
NOT_CONFIGURED = "Retraining is not configured: set DEEPSCREEN_RETRAIN_DATA."
#: The error of a run whose message never reached the broker.
BROKER_DOWN = "not started: the broker could not be reached, so no worker was told; start it again"


@bp.get("/training")
@login_required()
def index() -> str:
    """Runs newest first (keyset pages of `PAGE_SIZE` by ``?before=<id>``), with what
    the next one would train on and the gate's bars."""
    dbs = db.session()
    stmt = (
        select(TrainingRun, User.username)
        .outerjoin(User, User.id == TrainingRun.requested_by)
        .order_by(TrainingRun.id.desc())
    )
    before = id_arg(request.args, "before")
    if before:
        stmt = stmt.where(TrainingRun.id < before)
    rows = dbs.execute(stmt.limit(PAGE_SIZE + 1)).tuples().all()
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    settings = db.settings()
    return render_template(
        "models/training.html",
        runs=rows,
        next_before=rows[-1][0].id if more and rows else None,
        pending=pending_run(session=dbs),
        new_corrections=new_corrections(session=dbs),
        settings=settings,
        configured=bool(settings.retrain_data),
        duration=duration,
    )


@bp.get("/training/<int:run_id>")
@login_required()
def run(run_id: int) -> str:
    """One run: its fields, models and gate report."""
    dbs = db.session()
    found = dbs.get(TrainingRun, run_id)
    if found is None:
        abort(404)
    requested_by = dbs.get(User, found.requested_by) if found.requested_by else None
    return render_template(
        "models/run.html",
        run=found,
        requested_by=requested_by.username if requested_by else None,
        duration=duration,
    )


@bp.post("/training/start")
@login_required(Role.ADMIN)
def start() -> Response:
    """Queue a manual run and send it to the training worker, after the commit."""
    if not db.settings().retrain_data:
        flash(NOT_CONFIGURED, "error")
        return redirect(url_for(".index"))
    dbs = db.session()
    pending = pending_run(session=dbs)
    if pending is not None:
        flash(f"Run #{pending.id} is already {pending.status.value}: one run at a time.", "error")
        return redirect(url_for(".run", run_id=pending.id))
    # Read now: after the commit the expired user would open another transaction.
    who = g.user.username
    run_id = request_run(session=dbs, trigger=RunTrigger.MANUAL, requested_by=g.user.id).id
    audit.record(
        "training.start",
        target_type="training_run",
        target_id=run_id,
        after={"status": RunStatus.QUEUED.value, "trigger": RunTrigger.MANUAL.value},
    )
    dbs.commit()
    try:
        taskqueue.send(
            outbox.celery_app(), taskqueue.RETRAIN, args=[RunTrigger.MANUAL.value, run_id]
        )
    except TransientError as exc:
        logger.warning("training run %d not sent: %s", run_id, exc)
        _fail_queued(run_id, BROKER_DOWN)
        flash(f"Training run #{run_id} could not be started: the broker is unreachable.", "error")
        return redirect(url_for(".run", run_id=run_id))
    logger.info("training run %d queued by %s", run_id, who)
    flash(f"Training run #{run_id} queued: the training worker starts it when free.", "success")
    return redirect(url_for(".run", run_id=run_id))


def _fail_queued(run_id: int, error: str) -> None:
    """Mark the run failed, unless a worker has claimed it after all."""
    dbs = db.session()
    dbs.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.QUEUED)
        .values(status=RunStatus.FAILED, error=error, finished_at=utcnow())
    )
    dbs.commit()


def duration(run: TrainingRun, now: datetime | None = None) -> str:
    """How long the run took (or has taken so far), as ``1 h 02 min`` / ``3 min 05 s``."""
    if run.started_at is None:
        return ""
    end = run.finished_at or now or utcnow()
    return _human(end - run.started_at)


def _human(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
