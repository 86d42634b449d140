"""Tables of human moderation: accounts, the current verdict per image with its review
state, the decision history, the audit log and API tokens. No behaviour beyond
column defaults: queries live in `deepscreen.db.review_queries`."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    func,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from deepscreen.db.base import Base, BigIntId, utcnow
from deepscreen.db.models import (
    Image,
    ImageSource,
    ModelVersion,
    created_at_column,
    enum_column,
)


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything, including users and models
    MODERATOR = "moderator"  # reviews images
    VIEWER = "viewer"  # reads only


class ReviewState(enum.StrEnum):
    NONE = "none"  # the policy did not ask for a human
    OPEN = "open"  # in the review queue
    ESCALATED = "escalated"  # a moderator asked for a second opinion
    DECIDED = "decided"  # a human decided the label


class ReviewReason(enum.StrEnum):
    UNCERTAIN = "uncertain"  # score inside the band around the threshold
    FAKE = "fake"  # every fake verdict is checked
    AUDIT = "audit"  # random sample of confident reals (and of no-face verdicts)
    NO_FACE = "no_face"  # the model found no face (DEEPSCREEN_REVIEW_NO_FACE=review)
    MANUAL = "manual"  # a moderator opened it from outside the queue


class Action(enum.StrEnum):
    CONFIRM = "confirm"
    OVERRIDE = "override"
    FLAG = "flag"
    ESCALATE = "escalate"
    NOTE = "note"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    #: Werkzeug's ``scrypt:...`` (or whichever KDF it names) hash.
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(enum_column(Role, "user_role"))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: Moderator wellness: images stay blurred until hovered or revealed.
    blur_images: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: Identifies the login sessions; rotated on logout and password change, so every
    #: cookie issued before is dead on the server side.
    session_token: Mapped[str] = mapped_column(String(64))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    locked_until: Mapped[datetime | None] = mapped_column()
    last_login_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = created_at_column()

    def __repr__(self) -> str:
        return f"<User {self.username} {self.role}>"


class Verdict(Base):
    """The current verdict on one image: the latest prediction, the human decision when
    there is one, and where the image stands in the review queue. One row per image,
    written by the worker with the prediction; every filter of the queue and the API
    is a column here, so they need no join."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), unique=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT")
    )
    #: The model's score; None for a ``no_face`` verdict.
    score: Mapped[float | None] = mapped_column(Float)
    #: The model's label (``no_face`` when its face stage found no face).
    model_label: Mapped[str] = mapped_column(String(64))
    #: The human decision, when one was made.
    human_label: Mapped[str | None] = mapped_column(String(64))
    #: What the image is taken to be: the human decision, else the model's label.
    final_label: Mapped[str] = mapped_column(String(64))
    source: Mapped[ImageSource] = mapped_column(enum_column(ImageSource, "verdict_source"))
    state: Mapped[ReviewState] = mapped_column(
        enum_column(ReviewState, "review_state"),
        default=ReviewState.NONE,
        server_default=ReviewState.NONE.value,
    )
    reason: Mapped[ReviewReason | None] = mapped_column(enum_column(ReviewReason, "review_reason"))
    #: Higher first; ties by age.
    priority: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    #: Misclassified by the model: feeds retraining with ``flag_label``.
    flagged: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    flag_label: Mapped[str | None] = mapped_column(String(64))
    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    claim_expires_at: Mapped[datetime | None] = mapped_column()
    #: When the image was registered (copied, so the date filter needs no join).
    image_created_at: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )
    decided_at: Mapped[datetime | None] = mapped_column()

    image: Mapped[Image] = relationship()
    model_version: Mapped[ModelVersion] = relationship()
    claimer: Mapped[User | None] = relationship()

    __table_args__ = (
        # The queue: by state, highest priority first, then oldest; keyset pagination
        # walks this index in its own order.
        Index("ix_verdicts_queue", "state", text("priority DESC"), "image_created_at", "id"),
        Index("ix_verdicts_final_label_image_created_at", "final_label", "image_created_at"),
        Index("ix_verdicts_model_version_id", "model_version_id"),
        Index("ix_verdicts_image_created_at", "image_created_at"),
        Index("ix_verdicts_flagged", "flagged"),
        Index("ix_verdicts_score", "score"),
    )


class Review(Base):
    """One human action on an image: the decision history shown on its page."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    action: Mapped[Action] = mapped_column(enum_column(Action, "review_action"))
    #: The label the human gave (confirm, override, flag), if any.
    label: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    #: The model's verdict the human saw.
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = created_at_column()

    user: Mapped[User] = relationship()

    __table_args__ = (
        Index("ix_reviews_image_id_created_at", "image_id", "created_at"),
        Index("ix_reviews_user_id_created_at", "user_id", "created_at"),
        Index("ix_reviews_created_at", "created_at"),
    )


class AuditEvent(Base):
    """Who did what to what, with the state before and after."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    #: None for the system or an unknown user (a failed login names the username).
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str | None] = mapped_column(String(64))
    #: ``review.override``, ``user.create``, ``model.activate``, ``login.failed``...
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None] = mapped_column()
    after: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = created_at_column()

    __table_args__ = (
        Index("ix_audit_events_created_at", "created_at"),
        Index("ix_audit_events_action_created_at", "action", "created_at"),
        Index("ix_audit_events_user_id_created_at", "user_id", "created_at"),
        Index("ix_audit_events_target", "target_type", "target_id"),
    )


class ApiToken(Base):
    """A bearer token for the read API; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = created_at_column()
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    user: Mapped[User] = relationship()
