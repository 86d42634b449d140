"""Tables of outgoing webhooks: endpoints (subscriptions and per-submission callbacks),
events, and one delivery row per (event, endpoint) that records every attempt's
outcome. Queries and behaviour live in `deepscreen.webhooks`."""

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
    UniqueConstraint,
    func,
    true,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from deepscreen.db.base import Base, BigIntId, JsonDocument, utcnow
from deepscreen.db.models import created_at_column, enum_column


class EndpointKind(enum.StrEnum):
    SUBSCRIPTION = "subscription"  # made by an admin for chosen event types
    CALLBACK = "callback"  # given with one submitted image, for its verdict only


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    SUCCEEDED = "succeeded"  # a 2xx answer
    FAILED = "failed"  # gave up: out of attempts, or the endpoint was disabled


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    kind: Mapped[EndpointKind] = mapped_column(
        enum_column(EndpointKind, "endpoint_kind"),
        default=EndpointKind.SUBSCRIPTION,
        server_default=EndpointKind.SUBSCRIPTION.value,
    )
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(255))
    #: ``whsec_<base64>``; signs every delivery.
    secret: Mapped[str] = mapped_column(String(128))
    #: The secret before the last rotation, still signing until it expires.
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column()
    #: Event types delivered here, e.g. ``["verdict.created", "review.completed"]``.
    event_types: Mapped[list[str]] = mapped_column(JsonDocument)
    #: For a callback: the one image whose events it receives.
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: Why the endpoint was disabled (by an admin, or after failing too long).
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None] = mapped_column()
    #: Start of the current run of failed attempts; None after a success.
    failing_since: Mapped[datetime | None] = mapped_column()
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = created_at_column()
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )

    __table_args__ = (
        Index("ix_webhook_endpoints_active_kind", "active", "kind"),
        Index("ix_webhook_endpoints_image_id", "image_id"),
    )


class WebhookEvent(Base):
    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    #: ``msg_<random>``: the ``webhook-id`` header, the receiver's idempotency key.
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column()
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = created_at_column()

    __table_args__ = (Index("ix_webhook_events_type_created_at", "type", "created_at"),)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    status: Mapped[DeliveryStatus] = mapped_column(
        enum_column(DeliveryStatus, "delivery_status"),
        default=DeliveryStatus.PENDING,
        server_default=DeliveryStatus.PENDING.value,
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=sql_text("0"))
    #: When the next attempt is due (None once succeeded or failed).
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    last_attempt_at: Mapped[datetime | None] = mapped_column()
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_latency_ms: Mapped[float | None] = mapped_column(Float)
    delivered_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = created_at_column()

    event: Mapped[WebhookEvent] = relationship()
    endpoint: Mapped[WebhookEndpoint] = relationship()

    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id"),
        # The dispatcher's scan: pending deliveries that are due.
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        # The delivery log of one endpoint, newest first.
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
    )
