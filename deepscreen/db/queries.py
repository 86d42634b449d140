"""Query helpers. Each takes the session as a keyword argument and never opens,
commits or closes one: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import islice
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus, ModelVersion

#: Rows per INSERT statement: well under SQLite's bound-parameter limit.
INSERT_CHUNK = 500


class ObjectRef(Protocol):
    """What registering needs to know about an object (`storage.ObjectInfo` fits)."""

    @property
    def bucket(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def etag(self) -> str: ...

    @property
    def size(self) -> int | None: ...


def register_images(
    *,
    session: Session,
    objects: Iterable[ObjectRef],
    source: ImageSource,
    now: datetime | None = None,
) -> list[int]:
    """Insert each object not already known by (bucket, key, etag) as a queued image.

    Portable insert-or-ignore (``ON CONFLICT DO NOTHING``, on PostgreSQL and
    SQLite), so running it twice, or concurrently from two processes, registers
    each object version once. Returns the ids of the rows this call inserted,
    ascending; objects already known are not in the list.
    """
    now = now or utcnow()
    insert = _dialect_insert(session)
    new_ids: list[int] = []
    rows = iter(_unique_rows(objects, source=source, now=now))
    while chunk := list(islice(rows, INSERT_CHUNK)):
        stmt = (
            insert(Image)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=["bucket", "key", "etag"])
            .returning(Image.id)
        )
        new_ids.extend(session.execute(stmt).scalars())
    return sorted(new_ids)


def _unique_rows(
    objects: Iterable[ObjectRef], *, source: ImageSource, now: datetime
) -> Iterable[dict[str, Any]]:
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        ident = (obj.bucket, obj.key, obj.etag)
        if ident in seen:
            continue
        seen.add(ident)
        yield {
            "bucket": obj.bucket,
            "key": obj.key,
            "etag": obj.etag,
            "size": obj.size,
            "status": ImageStatus.QUEUED,
            "source": source,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "queued_at": now,
        }


def _dialect_insert(session: Session) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"register_images supports PostgreSQL and SQLite, not {name}")


def get_images(*, session: Session, ids: Iterable[int]) -> list[Image]:
    """The images with these ids, ascending by id; unknown ids are left out."""
    wanted = sorted(set(ids))
    if not wanted:
        return []
    return list(session.scalars(select(Image).where(Image.id.in_(wanted)).order_by(Image.id)))


def count_images_by_status(
    *, session: Session, buckets: Sequence[str] | None = None
) -> dict[ImageStatus, int]:
    """How many images are in each status (every status present, zero if none)."""
    stmt = select(Image.status, func.count()).group_by(Image.status)
    if buckets is not None:
        stmt = stmt.where(Image.bucket.in_(buckets))
    counts = {status: 0 for status in ImageStatus}
    for status, count in session.execute(stmt):
        counts[status] = count
    return counts


def get_active_model_version(*, session: Session) -> ModelVersion | None:
    """The model version workers should serve, if one is marked active."""
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).first()
