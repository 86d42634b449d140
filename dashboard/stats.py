"""The stats page: throughput, the classification backlog (images waiting for a worker
and how long the oldest has waited), verdict distribution, score histogram, override
rate per model version, the review queue and moderator activity.

Every number is one SQL aggregate over indexed columns (``GROUP BY`` on the database,
a few dozen rows back), so the page stays fast on 100k+ images. Time buckets are
truncated by the database (its date functions differ between SQLite and PostgreSQL,
hence `_truncate`) and only the aggregated rows are turned into datetimes here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy import Integer, case, cast, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from dashboard import charts, db, unfinished
from dashboard.auth import login_required
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageStatus, ModelVersion
from deepscreen.db.moderation import Action, Review, ReviewState, User, Verdict

bp = Blueprint("stats", __name__, url_prefix="/stats")

#: The windows offered (days); up to two days are shown per hour, longer ones per day.
WINDOWS = (1, 2, 7, 30, 90)
DEFAULT_DAYS = 2
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class OverrideRate:
    model_version_id: int
    name: str
    verdicts: int
    decided: int  # a human gave a label
    overridden: int  # ... different from the model's

    @property
    def rate(self) -> float | None:
        return self.overridden / self.decided if self.decided else None


@dataclass(frozen=True)
class QueueRow:
    state: str
    reason: str
    count: int
    oldest: datetime | None


@bp.get("/")
@login_required()
def index() -> str:
    """Every section over ``?days=`` (throughput, moderator activity) or all verdicts."""
    days = request.args.get("days", DEFAULT_DAYS, type=int)
    if days not in WINDOWS:
        days = DEFAULT_DAYS
    dbs, now = db.session(), utcnow()
    hourly = days <= 2
    series = throughput(session=dbs, now=now, days=days, hourly=hourly)
    labels = label_counts(session=dbs)
    final, model = _marginals(labels)
    names = sorted(set(final) | set(model))
    bins = score_histogram(session=dbs)
    edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    queue = queue_rows(session=dbs)
    backlog = queries.classify_backlog(session=dbs)
    actions, activity = moderator_activity(session=dbs, since=now - timedelta(days=days))
    fmt = "%m-%d %H:00" if hourly else "%Y-%m-%d"
    points = [(start.strftime(fmt), float(n)) for start, n in series]
    return render_template(
        "stats/index.html",
        days=days,
        windows=WINDOWS,
        hourly=hourly,
        now=now,
        series=series,
        total_done=sum(n for _, n in series),
        throughput_chart=charts.line_chart(points, title=f"Images done per {_unit(hourly)}"),
        label_names=names,
        final=final,
        model=model,
        labels_chart=charts.grouped_bar_chart(
            names,
            [
                ("final label", [final.get(n, 0) for n in names]),
                ("model's label", [model.get(n, 0) for n in names]),
            ],
            title="Verdicts per label: final and the model's",
        ),
        moved=sorted((m, f, n) for (m, f), n in labels.items() if m != f),
        bins=list(zip(edges, edges[1:], bins, strict=False)),
        histogram_chart=charts.histogram(bins, edges=edges, title="Scores of current verdicts"),
        unscored=unscored_count(session=dbs),
        overrides=override_rates(session=dbs),
        unfinished=unfinished.counts(session=dbs),
        backlog=backlog,
        backlog_wait=waited(backlog.oldest_queued_at, now),
        max_backlog=db.settings().submission_max_backlog,
        queue=queue,
        queue_total=sum(r.count for r in queue),
        oldest=min((r.oldest for r in queue if r.oldest), default=None),
        actions=actions,
        activity=activity,
        activity_chart=charts.bar_chart(
            [(name, float(sum(counts.values()))) for name, counts in activity.items()],
            title="Reviews per moderator",
        ),
    )


def waited(since: datetime | None, now: datetime) -> str:
    """How long since ``since``, to the second under an hour: ``42 s``, ``3 min 5 s``,
    ``2 h 10 min``; ``–`` for nothing."""
    if since is None:
        return "–"
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60} min"


def throughput(
    *, session: Session, now: datetime, days: int, hourly: bool
) -> list[tuple[datetime, int]]:
    """Images that reached done per hour (or day) over the last ``days``, oldest first,
    with empty buckets as zero."""
    step = timedelta(hours=1) if hourly else timedelta(days=1)
    end = now.replace(minute=0, second=0, microsecond=0)
    if not hourly:
        end = end.replace(hour=0)
    count = days * 24 if hourly else days
    starts = [end - step * i for i in reversed(range(count))]
    bucket = _truncate(session, Image.finished_at, "hour" if hourly else "day").label("bucket")
    stmt = (
        select(bucket, func.count())
        .where(
            Image.status == ImageStatus.DONE,
            # updated_at >= finished_at always: this bound walks ix_images_status_updated_at.
            Image.updated_at >= starts[0],
            Image.finished_at >= starts[0],
        )
        .group_by(bucket)
    )
    counts = {_as_utc(start): n for start, n in session.execute(stmt)}
    return [(start, counts.get(start, 0)) for start in starts]


def label_counts(*, session: Session) -> dict[tuple[str, str], int]:
    """Verdicts per (model label, final label): both distributions and how humans moved
    verdicts between labels, in one pass."""
    stmt = select(Verdict.model_label, Verdict.final_label, func.count()).group_by(
        Verdict.model_label, Verdict.final_label
    )
    return {(m, f): n for m, f, n in session.execute(stmt)}


def score_histogram(*, session: Session, bins: int = HISTOGRAM_BINS) -> list[int]:
    """Current verdicts per score bin of width ``1 / bins``; a score of 1 is in the last.
    Verdicts without a score (``no_face``) are in no bin: see `unscored_count`."""
    index = _floor(session, Verdict.score * bins).label("bin")
    counts = [0] * bins
    stmt = select(index, func.count()).where(Verdict.score.is_not(None)).group_by(index)
    for i, n in session.execute(stmt):
        counts[min(max(int(i), 0), bins - 1)] += n
    return counts


def unscored_count(*, session: Session) -> int:
    """Current verdicts without a score: the model found no face (``no_face``)."""
    stmt = select(func.count()).select_from(Verdict).where(Verdict.score.is_(None))
    return int(session.scalar(stmt) or 0)


def override_rates(*, session: Session) -> list[OverrideRate]:
    """Per model version: verdicts, how many a human decided, and how many of those the
    human labelled differently from the model."""
    overridden = func.sum(
        case(
            (Verdict.human_label.is_not(None) & (Verdict.human_label != Verdict.model_label), 1),
            else_=0,
        )
    )
    stmt = select(
        Verdict.model_version_id, func.count(), func.count(Verdict.human_label), overridden
    ).group_by(Verdict.model_version_id)
    names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).tuples().all())
    return [
        OverrideRate(mv, names.get(mv, f"#{mv}"), total, decided, int(over or 0))
        for mv, total, decided, over in sorted(session.execute(stmt).tuples())
    ]


def queue_rows(*, session: Session) -> list[QueueRow]:
    """Open and escalated verdicts per state and reason, with the oldest one's time."""
    stmt = (
        select(Verdict.state, Verdict.reason, func.count(), func.min(Verdict.created_at))
        .where(Verdict.state.in_((ReviewState.OPEN, ReviewState.ESCALATED)))
        .group_by(Verdict.state, Verdict.reason)
    )
    rows = [
        QueueRow(state.value, reason.value if reason else "none", n, _as_utc(oldest))
        for state, reason, n, oldest in session.execute(stmt)
    ]
    return sorted(rows, key=lambda r: (r.state, r.reason))


def moderator_activity(
    *, session: Session, since: datetime
) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Reviews since ``since`` per username and action: the actions seen, and counts."""
    stmt = (
        select(Review.user_id, Review.action, func.count())
        .where(Review.created_at >= since)
        .group_by(Review.user_id, Review.action)
    )
    rows = session.execute(stmt).all()
    user_ids = {user_id for user_id, _, _ in rows}
    names = dict(
        session.execute(select(User.id, User.username).where(User.id.in_(user_ids))).tuples().all()
    )
    activity: dict[str, dict[str, int]] = defaultdict(dict)
    for user_id, action, n in rows:
        activity[names.get(user_id, f"#{user_id}")][action.value] = n
    seen = {action.value for _, action, _ in rows}
    actions = [a.value for a in Action if a.value in seen]
    return actions, dict(sorted(activity.items()))


def _marginals(labels: dict[tuple[str, str], int]) -> tuple[dict[str, int], dict[str, int]]:
    final: dict[str, int] = defaultdict(int)
    model: dict[str, int] = defaultdict(int)
    for (model_label, final_label), n in labels.items():
        final[final_label] += n
        model[model_label] += n
    return dict(sorted(final.items())), dict(sorted(model.items()))


def _truncate(session: Session, column: Any, unit: str) -> ColumnElement[Any]:
    """``column`` (a UTC timestamp) truncated to the ``hour`` or ``day``, in SQL."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc(unit, func.timezone("UTC", column))
    # SQLite keeps naive UTC text: cut it to the unit.
    return func.strftime("%Y-%m-%d %H:00:00" if unit == "hour" else "%Y-%m-%d 00:00:00", column)


def _floor(session: Session, expr: Any) -> ColumnElement[Any]:
    """``floor(expr)`` for a non-negative ``expr``: PostgreSQL rounds a cast to integer,
    SQLite truncates it (and may be built without ``floor``)."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(func.floor(expr), Integer)
    return cast(expr, Integer)


def _as_utc(value: datetime | str | None) -> datetime | None:
    """A database timestamp (aware, naive UTC, or SQLite text) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _unit(hourly: bool) -> str:
    return "hour" if hourly else "day"
