"""The training worker's Celery tasks: thin adapters over `training.retrain.retrain`
and `deepscreen.retraining.check_retrain`.

Registered by name on an app built by `create_training_app`, which only
``deepscreen training-worker`` starts: it consumes the ``training`` queue alone, so
TensorFlow is loaded in that one worker and classify workers never see these tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task

from deepscreen import taskqueue
from deepscreen.config import Settings
from deepscreen.db.retraining import RunTrigger
from deepscreen.db.session import make_engine, make_session_factory
from deepscreen.errors import TransientError
from deepscreen.retraining import check_retrain
from training.retrain import retrain

#: Retries of a check that could not reach the database or the broker.
CHECK_MAX_RETRIES = 3


def create_training_app(settings: Settings) -> Celery:
    """`deepscreen.taskqueue.create_celery` plus the retraining tasks."""
    app = taskqueue.create_celery(settings)
    # A run takes minutes to hours: the classify tasks' time limits do not apply.
    app.conf.task_soft_time_limit = None
    app.conf.task_time_limit = None
    register_training_tasks(app, settings)
    return app


def register_training_tasks(app: Celery, settings: Settings) -> None:
    """Register ``deepscreen.retrain`` and ``deepscreen.check_retrain`` on ``app``."""
    session_factory = make_session_factory(make_engine(settings))

    def send_retrain(run_id: int) -> str:
        args = [RunTrigger.CORRECTIONS.value, run_id]
        return taskqueue.send(app, taskqueue.RETRAIN, args=args)

    # No autoretry: a run records its own failure; the next trigger starts a new one.
    @app.task(name=taskqueue.RETRAIN, bind=True, shared=False)
    def retrain_task(self: Task, trigger: str, run_id: int | None = None) -> dict[str, Any]:
        outcome = retrain(
            settings,
            trigger=trigger,
            run_id=None if run_id is None else int(run_id),
            task_id=str(self.request.id),
        )
        return outcome.summary()

    @app.task(
        name=taskqueue.CHECK_RETRAIN,
        bind=True,
        shared=False,
        autoretry_for=(TransientError,),
        max_retries=CHECK_MAX_RETRIES,
        retry_backoff=2,
        retry_jitter=True,
    )
    def check_retrain_task(self: Task) -> dict[str, int | None]:
        run_id = check_retrain(
            settings=settings, session_factory=session_factory, send=send_retrain
        )
        return {"queued_run_id": run_id}
