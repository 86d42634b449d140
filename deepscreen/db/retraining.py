"""The table of retraining runs: what triggered each, what it trained on, what the gate
said, and which candidate model it registered."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from deepscreen.db.base import Base, BigIntId
from deepscreen.db.models import created_at_column, enum_column


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    REGISTERED = "registered"  # the gate passed; a candidate model was registered
    REFUSED = "refused"  # the gate refused the candidate
    FAILED = "failed"  # an error stopped the run


class RunTrigger(enum.StrEnum):
    SCHEDULE = "schedule"
    CORRECTIONS = "corrections"  # enough new corrections arrived
    MANUAL = "manual"  # an admin asked from the dashboard


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    status: Mapped[RunStatus] = mapped_column(
        enum_column(RunStatus, "run_status"),
        default=RunStatus.QUEUED,
        server_default=RunStatus.QUEUED.value,
    )
    trigger: Mapped[RunTrigger] = mapped_column(enum_column(RunTrigger, "run_trigger"))
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    #: Corrections in the training set (and in the regression set).
    corrections: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    #: Highest review id included: corrections after it count as new for the trigger.
    last_review_id: Mapped[int | None] = mapped_column(BigInteger)
    base_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    candidate_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    gate_report: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    #: Celery task id of the run, to find its log lines.
    task_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = created_at_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (Index("ix_training_runs_status_created_at", "status", "created_at"),)
