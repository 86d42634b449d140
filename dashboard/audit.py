"""The audit log: `record` adds an event in the caller's transaction; the blueprint
lists and filters events (admins and moderators; viewers too, read-only)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from flask import Blueprint, g, render_template, request
from sqlalchemy import select

from dashboard import db
from dashboard.auth import login_required
from dashboard.filters import LAST_DAY, id_arg, text_arg
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import AuditEvent, User

bp = Blueprint("audit", __name__, url_prefix="/audit")

PAGE_SIZE = 100


def record(
    action: str,
    *,
    target_type: str | None = None,
    target_id: object = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    user: User | None = None,
    username: str | None = None,
) -> AuditEvent:
    """Add an audit event to this request's session (committed with the change)."""
    actor = user if user is not None else g.get("user")
    event = AuditEvent(
        user_id=actor.id if actor is not None else None,
        username=username or (actor.username if actor is not None else None),
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        before=before,
        after=after,
        created_at=utcnow(),
    )
    db.session().add(event)
    return event


@bp.get("/")
@login_required()
def index() -> str:
    """Events newest first, filtered by user, action prefix, target and date."""
    args = request.args
    stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
    if user := text_arg(args, "user"):
        stmt = stmt.where(AuditEvent.username == user)
    if action := text_arg(args, "action"):
        stmt = stmt.where(AuditEvent.action.startswith(action, autoescape=True))
    if target_type := text_arg(args, "target_type"):
        stmt = stmt.where(AuditEvent.target_type == target_type)
    if target_id := text_arg(args, "target_id"):
        stmt = stmt.where(AuditEvent.target_id == target_id)
    since, until = _date(args.get("since")), _date(args.get("until"))
    if since:
        stmt = stmt.where(AuditEvent.created_at >= since)
    if until:
        stmt = stmt.where(AuditEvent.created_at < until + timedelta(days=1))
    before_id = id_arg(args, "before")
    if before_id:
        stmt = stmt.where(AuditEvent.id < before_id)
    events = list(db.session().scalars(stmt.limit(PAGE_SIZE + 1)))
    more = len(events) > PAGE_SIZE
    events = events[:PAGE_SIZE]
    return render_template(
        "audit/index.html",
        events=events,
        next_before=events[-1].id if more and events else None,
        filters={k: v for k, v in args.items() if k != "before"},
    )


def _date(value: str | None) -> datetime | None:
    """``YYYY-MM-DD`` as midnight UTC; anything else is ignored."""
    if not value:
        return None
    try:
        parsed = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        return None
    if parsed > LAST_DAY:  # "until" adds a day
        return None
    return datetime.combine(parsed, time(), tzinfo=utcnow().tzinfo)
