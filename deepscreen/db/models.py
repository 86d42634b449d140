"""Tables. No behaviour beyond column defaults: queries live in `deepscreen.db.queries`."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from deepscreen.db.base import Base, BigIntId, JsonDocument, utcnow


class ImageStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


class ImageSource(enum.StrEnum):
    SCAN = "scan"  # a listing of a bucket or folder (CLI ingest, periodic scan)
    EVENT = "event"  # a bucket notification
    API = "api"  # submitted through the dashboard or its API


def enum_column(cls: type[enum.Enum], name: str) -> Enum:
    """Stored by value as VARCHAR plus a CHECK constraint: portable, and adding a
    member is a constraint change rather than a PostgreSQL ``ALTER TYPE``."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


def created_at_column() -> Mapped[datetime]:
    return mapped_column(default=utcnow, server_default=func.now())


class Image(Base):
    """One object version in a bucket (or folder) and where it is in the pipeline."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    #: S3 bucket name, or ``file:///root`` for a local folder.
    bucket: Mapped[str] = mapped_column(String(512))
    #: Object key relative to the bucket (POSIX path for a folder).
    key: Mapped[str] = mapped_column(String(1024))
    #: S3 ETag (unquoted) or the local store's content MD5: a new version is a new row.
    etag: Mapped[str] = mapped_column(String(128))
    #: SHA-256 of the bytes, filled in when a worker reads them.
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(String(255))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[ImageStatus] = mapped_column(
        enum_column(ImageStatus, "image_status"),
        default=ImageStatus.QUEUED,
        server_default=ImageStatus.QUEUED.value,
    )
    #: ``code: message`` of the error that failed the image, e.g. ``undecodable: ...``.
    failure_reason: Mapped[str | None] = mapped_column(Text)
    source: Mapped[ImageSource] = mapped_column(enum_column(ImageSource, "image_source"))
    #: How many times a worker started on the image (bounds redelivery loops).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )
    #: Last time the image was (re-)enqueued; the reconciler compares it with a timeout.
    queued_at: Mapped[datetime | None] = mapped_column()
    #: When a worker last took the image into processing.
    started_at: Mapped[datetime | None] = mapped_column()
    #: Id of the task that last took the image into processing: its own redelivered or
    #: retried message takes the image back, any other task leaves it alone.
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    #: When the image reached done or failed.
    finished_at: Mapped[datetime | None] = mapped_column()

    predictions: Mapped[list[Prediction]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        UniqueConstraint("bucket", "key", "etag"),
        Index("ix_images_status_updated_at", "status", "updated_at"),
        Index("ix_images_status_queued_at", "status", "queued_at"),
        Index("ix_images_sha256", "sha256"),
        Index("ix_images_created_at", "created_at"),
    )

    def __repr__(self) -> str:
        return f"<Image {self.id} {self.bucket}/{self.key} {self.status}>"


class ModelStatus(enum.StrEnum):
    CANDIDATE = "candidate"  # trained and gated, not (yet) serving
    ACTIVE = "active"  # the one workers serve
    RETIRED = "retired"  # served before; a rollback can make it active again


class ModelVersion(Base):
    """A model artefact the workers may serve; at most one row is active."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    #: SHA-256 of the ``.tflite`` file: the identity of a model.
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    #: Where the artefact lives (a path or store URL).
    location: Mapped[str] = mapped_column(String(1024))
    #: The model card: labels, threshold, preprocessing, metrics.
    card: Mapped[dict[str, Any]] = mapped_column()
    active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: Lifecycle; kept in step with ``active`` by `deepscreen.registry`.
    status: Mapped[ModelStatus] = mapped_column(
        enum_column(ModelStatus, "model_status"),
        default=ModelStatus.CANDIDATE,
        server_default=ModelStatus.CANDIDATE.value,
    )
    #: Run next to the active model on live traffic, scores stored, never used.
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The retraining gate's report for this candidate (None for models not gated).
    gate_report: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = created_at_column()

    __table_args__ = (
        # Partial unique index: many inactive rows, at most one active one.
        Index(
            "uq_model_versions_active",
            "active",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
    )

    def __repr__(self) -> str:
        return f"<ModelVersion {self.id} {self.name} {self.sha256[:12]}>"


class Prediction(Base):
    """One model version's verdict on one image."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT")
    )
    #: Probability of the positive ("fake") class, 0..1; None when the model gave no
    #: score (label ``no_face``: its face stage found no face).
    score: Mapped[float | None] = mapped_column(Float)
    #: The model's label (``real``, ``fake``) or ``no_face``.
    label: Mapped[str] = mapped_column(String(64))
    #: The decision threshold the label was derived with.
    threshold: Mapped[float] = mapped_column(Float)
    inference_ms: Mapped[float] = mapped_column(Float)
    #: Every face the model's face stage found, in original image pixels:
    #: ``[{x0, y0, x1, y1, confidence, score}]`` (``score`` None for a face not
    #: classified); None for a model without a face stage.
    faces: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonDocument)
    #: Why the model gave no score (``no_face``), else None.
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = created_at_column()

    image: Mapped[Image] = relationship(back_populates="predictions")
    model_version: Mapped[ModelVersion] = relationship()

    __table_args__ = (
        UniqueConstraint("image_id", "model_version_id"),
        Index("ix_predictions_model_version_id", "model_version_id"),
        Index("ix_predictions_label_created_at", "label", "created_at"),
    )

    def __repr__(self) -> str:
        score = "-" if self.score is None else f"{self.score:.3f}"
        return f"<Prediction image={self.image_id} {self.label} {score}>"
