"""Queries behind the review queue and the image list: ordering, keyset pages,
neighbours for next/previous, counts, claims.

The queue is ordered by priority (highest first), then age (oldest first), then id;
the image list by id, newest first. Pages are keyset ("after this row"), never
OFFSET, so page 2,000 costs what page 1 costs; `ix_verdicts_queue` serves the queue.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import CursorResult, Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from dashboard.filters import VerdictFilter
from deepscreen.db.models import Image
from deepscreen.db.moderation import Verdict

PAGE_SIZE = 50


class Order(StrEnum):
    PRIORITY = "priority"  # the review queue
    NEWEST = "newest"  # the image list


@dataclass(frozen=True)
class Cursor:
    """A row's position in an ordering."""

    priority: float
    created: datetime
    id: int

    def encode(self) -> str:
        raw = f"{self.priority!r}|{self.created.isoformat()}|{self.id}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str | None) -> Cursor | None:
        """The cursor in ``token``; None for a missing or malformed one."""
        if not token or len(token) > 200:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            priority, created, row_id = raw.split("|")
            return cls(float(priority), datetime.fromisoformat(created), int(row_id))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None

    @classmethod
    def of(cls, verdict: Verdict) -> Cursor:
        return cls(verdict.priority, verdict.image_created_at, verdict.id)


@dataclass
class Page:
    rows: list[tuple[Verdict, Image]]
    next: Cursor | None
    prev: Cursor | None


def base(filters: VerdictFilter) -> Select[Any]:
    stmt = select(Verdict, Image).join(Image, Image.id == Verdict.image_id)
    return filters.apply(stmt)


def _after(cursor: Cursor, order: Order, forward: bool) -> Any:
    """Rows after ``cursor`` in ``order`` (before it when not ``forward``)."""
    if order is Order.NEWEST:
        return Verdict.id < cursor.id if forward else Verdict.id > cursor.id
    if forward:
        return or_(
            Verdict.priority < cursor.priority,
            and_(
                Verdict.priority == cursor.priority,
                or_(
                    Verdict.image_created_at > cursor.created,
                    and_(Verdict.image_created_at == cursor.created, Verdict.id > cursor.id),
                ),
            ),
        )
    return or_(
        Verdict.priority > cursor.priority,
        and_(
            Verdict.priority == cursor.priority,
            or_(
                Verdict.image_created_at < cursor.created,
                and_(Verdict.image_created_at == cursor.created, Verdict.id < cursor.id),
            ),
        ),
    )


def _ordered(stmt: Select[Any], order: Order, forward: bool) -> Select[Any]:
    if order is Order.NEWEST:
        return stmt.order_by(Verdict.id.desc() if forward else Verdict.id.asc())
    if forward:
        return stmt.order_by(
            Verdict.priority.desc(), Verdict.image_created_at.asc(), Verdict.id.asc()
        )
    return stmt.order_by(Verdict.priority.asc(), Verdict.image_created_at.desc(), Verdict.id.desc())


def page(
    session: Session,
    filters: VerdictFilter,
    order: Order,
    *,
    after: Cursor | None = None,
    before: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> Page:
    """One page after ``after`` (or before ``before``, or the first page)."""
    forward = before is None
    stmt = base(filters)
    cursor = after if forward else before
    if cursor is not None:
        stmt = stmt.where(_after(cursor, order, forward))
    result = session.execute(_ordered(stmt, order, forward).limit(limit + 1)).all()
    rows: list[tuple[Verdict, Image]] = [(v, i) for v, i in result]
    more = len(rows) > limit
    rows = rows[:limit]
    if not forward:
        rows.reverse()
    if not rows:
        return Page([], None, None)
    first, last = Cursor.of(rows[0][0]), Cursor.of(rows[-1][0])
    has_next = more if forward else True
    has_prev = (cursor is not None) if forward else more
    return Page(rows, last if has_next else None, first if has_prev else None)


def count(session: Session, filters: VerdictFilter) -> int:
    stmt = filters.apply(select(func.count()).select_from(Verdict))
    return int(session.scalar(stmt) or 0)


def selected_ids(session: Session, filters: VerdictFilter, *, lock: bool = False) -> list[int]:
    """The verdict ids the filters select, ascending; ``lock`` holds the rows (FOR UPDATE)
    until the transaction ends, so none is decided elsewhere meanwhile."""
    stmt = filters.apply(select(Verdict.id)).order_by(Verdict.id)
    if lock:
        stmt = stmt.with_for_update()
    return list(session.scalars(stmt))


def selection_digest(ids: list[int]) -> str:
    """A fingerprint of exactly these verdict ids: a bulk confirmation carries the one of
    the selection it showed, and any change (same count or not) gives another."""
    return hashlib.sha256(",".join(map(str, ids)).encode("ascii")).hexdigest()


def neighbour(
    session: Session,
    filters: VerdictFilter,
    order: Order,
    verdict: Verdict,
    *,
    forward: bool,
    user_id: int,
    now: datetime,
) -> int | None:
    """The image id next to ``verdict`` (``forward``) or before it, skipping items
    someone else holds a live claim on."""
    stmt = (
        base(filters)
        .where(_after(Cursor.of(verdict), order, forward))
        .where(
            or_(
                Verdict.claimed_by.is_(None),
                Verdict.claimed_by == user_id,
                Verdict.claim_expires_at <= now,
            )
        )
    )
    row = session.execute(_ordered(stmt, order, forward).limit(1)).first()
    return None if row is None else int(row[0].image_id)


def first_open(
    session: Session, filters: VerdictFilter, order: Order, *, user_id: int, now: datetime
) -> int | None:
    """The first item of the filtered queue nobody else is working on."""
    stmt = base(filters).where(
        or_(
            Verdict.claimed_by.is_(None),
            Verdict.claimed_by == user_id,
            Verdict.claim_expires_at <= now,
        )
    )
    row = session.execute(_ordered(stmt, order, True).limit(1)).first()
    return None if row is None else int(row[0].image_id)


def claimed_by_other(verdict: Verdict, user_id: int, now: datetime) -> bool:
    return (
        verdict.claimed_by is not None
        and verdict.claimed_by != user_id
        and verdict.claim_expires_at is not None
        and verdict.claim_expires_at > now
    )


def claim(session: Session, verdict_id: int, user_id: int, now: datetime, seconds: int) -> bool:
    """Claim the verdict for ``user_id`` unless someone else holds a live claim.

    One conditional UPDATE, so two moderators opening the item at once cannot both
    get it; the caller commits.
    """
    stmt = (
        update(Verdict)
        .where(
            Verdict.id == verdict_id,
            or_(
                Verdict.claimed_by.is_(None),
                Verdict.claimed_by == user_id,
                Verdict.claim_expires_at <= now,
            ),
        )
        .values(claimed_by=user_id, claim_expires_at=now + timedelta(seconds=seconds))
        .execution_options(synchronize_session="fetch")
    )
    result = cast(CursorResult[Any], session.execute(stmt))
    return bool(result.rowcount)


def release(verdict: Verdict, user_id: int) -> None:
    if verdict.claimed_by == user_id:
        verdict.claimed_by = None
        verdict.claim_expires_at = None
