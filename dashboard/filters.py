"""The filters of the review queue, the image list, bulk actions and the read API.

`VerdictFilter.from_args(request.args)` reads them from a query string; values that
do not parse are dropped and reported, never passed to SQL (every filter is a bound
parameter). `apply(stmt)` narrows a ``select`` over `Verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select

from deepscreen.db.base import utcnow
from deepscreen.db.models import ImageSource
from deepscreen.db.moderation import ReviewReason, ReviewState, Verdict

#: Largest database id (a signed 64-bit integer); a larger one names no row.
MAX_ID = 2**63 - 1
#: Days a date filter may name: one more day must still be a date.
LAST_DAY = date.max - timedelta(days=1)

#: ``state=queue`` (the default of the review queue): open and escalated items.
QUEUE_STATES = (ReviewState.OPEN, ReviewState.ESCALATED)


@dataclass(frozen=True)
class VerdictFilter:
    label: str | None = None  # the final label (human decision, else the model's)
    score_min: float | None = None
    score_max: float | None = None
    model_version: int | None = None  # model_versions.id
    source: ImageSource | None = None
    since: date | None = None  # registered on or after
    until: date | None = None  # registered on or before
    #: A `ReviewState` value, ``queue`` (open or escalated) or ``all``.
    state: str | None = None
    reason: ReviewReason | None = None
    flagged: bool | None = None

    @classmethod
    def from_args(
        cls, args: Mapping[str, str], *, default_state: str | None = None
    ) -> tuple[VerdictFilter, list[str]]:
        """The filter in ``args`` and a message per value that was ignored."""
        errors: list[str] = []
        values: dict[str, Any] = {}

        def read(name: str, parse: Any) -> None:
            raw = (args.get(name) or "").strip()
            if not raw:
                return
            try:
                values[name] = parse(raw)
            except (ValueError, KeyError):
                errors.append(f"ignored {name}={raw[:40]!r}")

        read("label", _label)
        read("score_min", _probability)
        read("score_max", _probability)
        read("model_version", positive_id)
        read("source", ImageSource)
        read("since", day)
        read("until", day)
        read("state", _state)
        read("reason", ReviewReason)
        read("flagged", _boolean)
        values.setdefault("state", default_state)
        return cls(**values), errors

    def apply(self, stmt: Select[Any]) -> Select[Any]:
        if self.label is not None:
            stmt = stmt.where(Verdict.final_label == self.label)
        if self.score_min is not None:
            stmt = stmt.where(Verdict.score >= self.score_min)
        if self.score_max is not None:
            stmt = stmt.where(Verdict.score <= self.score_max)
        if self.model_version is not None:
            stmt = stmt.where(Verdict.model_version_id == self.model_version)
        if self.source is not None:
            stmt = stmt.where(Verdict.source == self.source)
        if self.since is not None:
            stmt = stmt.where(Verdict.image_created_at >= _midnight(self.since))
        if self.until is not None:
            stmt = stmt.where(Verdict.image_created_at < _midnight(self.until + timedelta(days=1)))
        if self.state == "queue":
            stmt = stmt.where(Verdict.state.in_(QUEUE_STATES))
        elif self.state not in (None, "all"):
            stmt = stmt.where(Verdict.state == ReviewState(self.state))
        if self.reason is not None:
            stmt = stmt.where(Verdict.reason == self.reason)
        if self.flagged is not None:
            stmt = stmt.where(Verdict.flagged.is_(self.flagged))
        return stmt

    def to_args(self) -> dict[str, Any]:
        """The filter as query-string arguments (for links and hidden form fields)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                out[f.name] = "true" if value else "false"
            elif isinstance(value, date):
                out[f.name] = value.isoformat()
            else:
                out[f.name] = str(getattr(value, "value", value))
        return out


def _label(raw: str) -> str:
    if len(raw) > 64 or "\x00" in raw:
        raise ValueError("too long or not text")
    return raw


def text_arg(args: Mapping[str, str], name: str, max_length: int = 255) -> str | None:
    """The text in ``args[name]``, or None when it is absent or no column could hold it
    (too long, or a NUL, which PostgreSQL refuses)."""
    value = args.get(name) or ""
    if not value or len(value) > max_length or "\x00" in value:
        return None
    return value


def _probability(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError("not in [0, 1]")
    return value


def positive_id(raw: str) -> int:
    """A database id: an integer from 1 to `MAX_ID` (ValueError otherwise)."""
    value = int(raw)
    if not 1 <= value <= MAX_ID:
        raise ValueError("not an id")
    return value


def id_arg(args: Mapping[str, str], name: str) -> int | None:
    """The id in ``args[name]``, or None when it is absent or not an id (ignored)."""
    try:
        return positive_id((args.get(name) or "").strip())
    except ValueError:
        return None


def day(raw: str) -> date:
    """``YYYY-MM-DD``, up to `LAST_DAY` (so "until that day" can add one)."""
    value = date.fromisoformat(raw)
    if value > LAST_DAY:
        raise ValueError("out of range")
    return value


def _state(raw: str) -> str:
    if raw in ("queue", "all"):
        return raw
    return ReviewState(raw).value


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean")


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=utcnow().tzinfo)
