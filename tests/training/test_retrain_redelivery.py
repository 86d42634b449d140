"""A retraining message delivered again (issue 14, item 6): Redis gives a message back
after the visibility timeout, minutes now that it follows the classify time limits,
while a run takes longer. The copy of a scheduled run's message must not train again
once the first run has finished."""

from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import func, select

from deepscreen.config import Settings
from deepscreen.db.retraining import RunStatus, RunTrigger, TrainingRun
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from training.retrain import SKIPPED, retrain


def test_a_scheduled_runs_message_delivered_again_trains_nothing(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        retrain_data=(f"tree:{tmp_path / 'no-such-data'}",),
    )
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    task_id = f"task-{secrets.token_hex(6)}"
    try:
        # Given a scheduled run that its task's first delivery made, and finished
        with session_scope(factory) as session:
            session.add(
                TrainingRun(trigger=RunTrigger.SCHEDULE, status=RunStatus.REFUSED, task_id=task_id)
            )
        with session_scope(factory) as session:
            before = session.scalar(select(func.count()).select_from(TrainingRun))
        # When the same message is delivered again
        outcome = retrain(settings, trigger="schedule", task_id=task_id)
        # Then it makes no run
        assert outcome.status == SKIPPED
        with session_scope(factory) as session:
            assert session.scalar(select(func.count()).select_from(TrainingRun)) == before
        # While another task's scheduled run does start (and fails here: no data)
        other = retrain(settings, trigger="schedule", task_id=f"task-{secrets.token_hex(6)}")
        assert other.status == RunStatus.FAILED.value
    finally:
        engine.dispose()
