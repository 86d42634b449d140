"""Images without a verdict: failed ones with their reason, and ones still queued or
being classified; the admins' retry, which re-queues them through the classify task.

The image list shows them for ``state=failed`` and ``state=no_verdict`` (the review
queue lists verdicts, so an image the worker could not classify would otherwise never
appear). A retry resets the image to queued with its attempts at zero, commits, and
only then sends classify tasks by name, as the ingest path does; when the broker is
down the images stay queued and the reconciler sends them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from dashboard import audit, db, events
from dashboard.auth import login_required
from dashboard.filters import day, id_arg, positive_id
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus
from deepscreen.db.moderation import Role, Verdict

bp = Blueprint("unfinished", __name__)

#: The image list's ``state`` values that list images rather than verdicts.
FAILED, NO_VERDICT = "failed", "no_verdict"
STATES = (FAILED, NO_VERDICT)
PAGE_SIZE = 50
#: Images one retry re-queues at most (the next click takes the rest).
RETRY_LIMIT = 1000
#: Statuses a retry re-queues: failed, or queued and waiting (a lost message is sent
#: again). Processing images belong to a worker; done ones have their prediction.
RETRYABLE = (ImageStatus.FAILED, ImageStatus.QUEUED)


@dataclass(frozen=True)
class ImageFilter:
    state: str = NO_VERDICT
    source: ImageSource | None = None
    since: date | None = None  # registered on or after
    until: date | None = None  # registered on or before

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> tuple[ImageFilter, list[str]]:
        """The filter in ``args`` and a message per value that was ignored."""
        values: dict[str, Any] = {}
        errors: list[str] = []
        for name, parse in (("source", ImageSource), ("since", day), ("until", day)):
            raw = (args.get(name) or "").strip()
            if raw:
                try:
                    values[name] = parse(raw)
                except ValueError:
                    errors.append(f"ignored {name}={raw[:40]!r}")
        state = args.get("state")
        return cls(state=state if state in STATES else NO_VERDICT, **values), errors

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        stmt = stmt.where(~select(Verdict.id).where(Verdict.image_id == Image.id).exists())
        if self.state == FAILED:
            stmt = stmt.where(Image.status == ImageStatus.FAILED)
        if self.source is not None:
            stmt = stmt.where(Image.source == self.source)
        if self.since is not None:
            stmt = stmt.where(Image.created_at >= _midnight(self.since))
        if self.until is not None:
            stmt = stmt.where(Image.created_at < _midnight(self.until + timedelta(days=1)))
        return stmt

    def to_args(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self.source is not None:
            out["source"] = self.source.value
        for name in ("since", "until"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).isoformat()
        return out


def page(
    session: Session, filters: ImageFilter, *, after: int | None = None, limit: int = PAGE_SIZE
) -> tuple[list[Image], int | None]:
    """Newest first, keyset on the id: the images after id ``after`` and the next one's
    cursor (None on the last page)."""
    stmt = filters.apply(select(Image))
    if after is not None:
        stmt = stmt.where(Image.id < after)
    rows = list(session.scalars(stmt.order_by(Image.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def count(session: Session, filters: ImageFilter) -> int:
    return int(session.scalar(filters.apply(select(func.count()).select_from(Image))) or 0)


def counts(*, session: Session) -> dict[str, int]:
    """Images without a verdict by status, and ``failed``/``no_verdict`` totals."""
    stmt = (
        ImageFilter()
        .apply(select(Image.status, func.count()).select_from(Image))
        .group_by(Image.status)
    )
    by_status = {status.value: int(n) for status, n in session.execute(stmt)}
    return {
        **{s.value: by_status.get(s.value, 0) for s in ImageStatus},
        FAILED: by_status.get(ImageStatus.FAILED.value, 0),
        NO_VERDICT: sum(by_status.values()),
    }


def reason(image: Image) -> str:
    """Why the image has no verdict, in a moderator's words."""
    if image.status is ImageStatus.FAILED:
        return image.failure_reason or "failed (no reason recorded)"
    if image.status is ImageStatus.PROCESSING:
        return f"being classified (attempt {image.attempts})"
    if image.status is ImageStatus.QUEUED:
        return "queued, waiting for a worker"
    return "classified, but no verdict was recorded"


def retry(session: Session, ids: Sequence[int], *, now: datetime) -> list[int]:
    """Reset the retryable images among ``ids`` to queued with no attempts used (rows
    locked); returns their ids. The caller commits, then enqueues."""
    stmt = (
        ImageFilter()
        .apply(select(Image))
        .where(Image.id.in_(list(ids)), Image.status.in_(RETRYABLE))
        .order_by(Image.id)
        .with_for_update()
    )
    images = list(session.scalars(stmt))
    for image in images:
        image.status = ImageStatus.QUEUED
        image.attempts = 0
        image.failure_reason = None
        image.queued_at = now
        image.started_at = image.finished_at = None
    return [image.id for image in images]


def render_listing() -> str:
    """The image list for ``state=failed`` or ``state=no_verdict``."""
    filters, errors = ImageFilter.from_args(request.args)
    for message in errors:
        flash(message, "warning")
    dbs = db.session()
    rows, next_after = page(dbs, filters, after=id_arg(request.args, "after"))
    return render_template(
        "review/unfinished.html",
        rows=[(image, reason(image)) for image in rows],
        total=count(dbs, filters),
        next_after=next_after,
        filters=filters,
        args=filters.to_args(),
        states=STATES,
    )


@bp.post("/images/retry")
@login_required(Role.ADMIN)
def retry_images() -> Any:
    """Re-queue the chosen images (``image_id``, repeated) or every failed one
    (``all_failed``) matching the filters, up to `RETRY_LIMIT`."""
    filters, errors = ImageFilter.from_args(request.form)
    if errors:
        abort(400, description="; ".join(errors))
    dbs = db.session()
    if request.form.get("all_failed"):
        chosen = list(
            dbs.scalars(
                ImageFilter(FAILED, filters.source, filters.since, filters.until)
                .apply(select(Image.id))
                .order_by(Image.id)
                .limit(RETRY_LIMIT)
            )
        )
    else:
        try:
            chosen = [positive_id(raw) for raw in request.form.getlist("image_id")]
        except ValueError:
            abort(400, description="image_id must be image ids")
        if len(chosen) > RETRY_LIMIT:
            abort(400, description=f"choose at most {RETRY_LIMIT} images")
    stmt = select(Image.id, Image.failure_reason).where(Image.id.in_(chosen))
    failed_before = dict(dbs.execute(stmt).tuples().all())
    requeued = retry(dbs, chosen, now=utcnow())
    if requeued:
        audit.record(
            "image.retry",
            target_type="images",
            target_id=",".join(map(str, requeued[:20])) + ("…" if len(requeued) > 20 else ""),
            before={"reasons": {str(i): failed_before.get(i) for i in requeued[:100]}},
            after={"status": ImageStatus.QUEUED.value, "count": len(requeued)},
        )
    dbs.commit()  # enqueue after commit: a worker must find the rows queued
    tasks = events.enqueue(requeued, db.settings())
    if not requeued:
        flash("No image retried: choose failed or queued images.", "warning")
    elif tasks:
        flash(
            f"{len(requeued)} image{'s' if len(requeued) != 1 else ''} re-queued "
            f"({tasks} classify task{'s' if tasks != 1 else ''} sent).",
            "ok",
        )
    else:
        flash(
            f"{len(requeued)} images re-queued; the broker is unavailable, so the "
            "reconciler will send them.",
            "warning",
        )
    return redirect(url_for("review.images", **filters.to_args()))


def _midnight(value: date) -> datetime:
    return datetime.combine(value, time(), tzinfo=utcnow().tzinfo)
