"""Query helpers. Each takes the session as a keyword argument and never opens,
commits or closes one: the caller owns the transaction."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import islice
from typing import Any, NamedTuple, Protocol

from sqlalchemy import TextualSelect, bindparam, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from deepscreen.db.base import Base, utcnow
from deepscreen.db.models import (
    Image,
    ImageSource,
    ImageStatus,
    ModelStatus,
    ModelVersion,
    Prediction,
)

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
    rows = iter(_unique_rows(objects, source=source, now=now))
    chunk = list(islice(rows, INSERT_CHUNK))
    connection = session.connection()
    if len(chunk) == 1:
        # One object (an event, a submission): a cached statement (`insert_ignore`).
        return insert_ignore(
            session=session,
            model=Image,
            rows=chunk,
            conflict=("bucket", "key", "etag"),
            returning="id",
        )
    # Core execution with the rows as parameters ("insertmanyvalues"), not the ORM's
    # bulk-insert path: one compilation per call for a scan's many rows.
    stmt = (
        dialect_insert(session)(Image.__table__)
        .on_conflict_do_nothing(index_elements=["bucket", "key", "etag"])
        .returning(Image.id)
    )
    new_ids: list[int] = []
    while chunk:
        new_ids.extend(connection.execute(stmt, chunk).scalars())
        chunk = list(islice(rows, INSERT_CHUNK))
    return sorted(new_ids)


@functools.lru_cache(maxsize=128)
def _insert_ignore_statement(
    model: type[Base],
    columns: tuple[str, ...],
    rows: int,
    conflict: tuple[str, ...],
    returning: str,
) -> TextualSelect:
    """``INSERT INTO <model's table> (columns) VALUES (...), ... (``rows`` rows)
    ON CONFLICT (conflict) DO NOTHING RETURNING returning``, as text with typed
    parameters (enums by value, UTC datetimes, JSON; row ``i``'s value of column ``c``
    is parameter ``c__i``, see `_rows_as_params`): the same SQL on PostgreSQL and SQLite.

    Built once per process for each shape, and cacheable, unlike the dialects' insert
    constructs: their ON CONFLICT clause has no cache key, so SQLAlchemy compiled them
    again on every call, a multi-row ``values()`` one with all its parameters (a few
    milliseconds of CPU per classify batch for its predictions and verdicts)."""
    table = model.__table__
    names = ", ".join(f'"{name}"' for name in columns)
    values = ", ".join(
        "(" + ", ".join(f":{name}__{i}" for name in columns) + ")" for i in range(rows)
    )
    targets = ", ".join(f'"{name}"' for name in conflict)
    params = [
        bindparam(f"{name}__{i}", type_=table.c[name].type) for i in range(rows) for name in columns
    ]
    return (
        text(
            f"INSERT INTO {model.__tablename__} ({names}) VALUES {values} "
            f'ON CONFLICT ({targets}) DO NOTHING RETURNING "{returning}"'
        )
        .bindparams(*params)
        .columns(table.c[returning])
    )


def _rows_as_params(rows: Sequence[dict[str, Any]], columns: tuple[str, ...]) -> dict[str, Any]:
    """The parameters of `_insert_ignore_statement` for ``rows``."""
    return {f"{name}__{i}": row[name] for i, row in enumerate(rows) for name in columns}


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


def dialect_insert(session: Session) -> Any:
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


def get_images_for_update(*, session: Session, ids: Iterable[int]) -> list[Image]:
    """Like `get_images`, but the rows stay locked until the transaction ends.

    ``SELECT ... FOR UPDATE`` on PostgreSQL, so two workers claiming the same image
    (a redelivered message) take turns; SQLite's ``BEGIN IMMEDIATE`` already
    serialises writers.
    """
    wanted = sorted(set(ids))
    if not wanted:
        return []
    stmt = select(Image).where(Image.id.in_(wanted)).order_by(Image.id).with_for_update()
    return list(session.scalars(stmt))


def get_pending_images_for_update(
    *, session: Session, limit: int, task_id: str
) -> tuple[list[Image], list[Image]]:
    """What a micro-batch takes, locked: the images ``task_id`` claimed and still holds
    (its message was redelivered or retried), then the oldest queued images, up to
    ``limit`` in all. Rows another transaction holds are skipped (PostgreSQL), so two
    workers claiming at once take different images.

    Returns (held by ``task_id``, queued); the queued list is ``limit`` minus the
    first long when more images wait than this batch takes.
    """
    own = list(
        session.scalars(
            select(Image)
            .where(Image.status == ImageStatus.PROCESSING, Image.claimed_by == task_id)
            .order_by(Image.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    room = limit - len(own)
    if room <= 0:
        return own, []
    queued = session.scalars(
        select(Image)
        .where(Image.status == ImageStatus.QUEUED)
        .order_by(Image.queued_at, Image.id)
        .limit(room)
        .with_for_update(skip_locked=True)
    )
    return own, list(queued)


class Backlog(NamedTuple):
    """Images waiting for a worker (queued) and since when the oldest has waited."""

    queued: int
    oldest_queued_at: datetime | None


def classify_backlog(*, session: Session, cap: int | None = None) -> Backlog:
    """The queued images (counted up to ``cap`` + 1 when given, so a check against a
    bound stays cheap however long the queue) and the oldest one's ``queued_at``.
    Both walk the (status, queued_at) index."""
    # Only indexed columns, so PostgreSQL can count from the index alone.
    waiting = select(Image.queued_at).where(Image.status == ImageStatus.QUEUED)
    if cap is not None:
        waiting = waiting.limit(cap + 1)
    count = session.scalar(select(func.count()).select_from(waiting.subquery()))
    oldest = session.scalar(
        select(func.min(Image.queued_at)).where(Image.status == ImageStatus.QUEUED)
    )
    return Backlog(int(count or 0), oldest)


def ensure_model_version(
    *, session: Session, sha256: str, name: str, location: str, card: dict[str, Any]
) -> ModelVersion:
    """The row of the model with this sha256, registering it if unknown.

    A new model becomes the active one only if no model is active yet; an existing
    row is returned as it is. Insert-or-ignore, so concurrent workers starting with
    the same model register it once.
    """
    insert = dialect_insert(session)
    values = {"sha256": sha256, "name": name, "location": location, "card": card}
    # No conflict target: the first statement also yields to the partial unique index
    # on ``active`` (another model is active), the second only to the sha256.
    for active in (True, False):
        status = ModelStatus.ACTIVE if active else ModelStatus.CANDIDATE
        stmt = (
            insert(ModelVersion)
            .values(active=active, status=status, **values)
            .on_conflict_do_nothing()
        )
        session.execute(stmt)
    return session.scalars(select(ModelVersion).where(ModelVersion.sha256 == sha256)).one()


def predicted_image_ids(*, session: Session, ids: Iterable[int], model_version_id: int) -> set[int]:
    """Which of these images already have a prediction from this model version."""
    wanted = sorted(set(ids))
    if not wanted:
        return set()
    stmt = select(Prediction.image_id).where(
        Prediction.model_version_id == model_version_id, Prediction.image_id.in_(wanted)
    )
    return set(session.scalars(stmt))


def add_predictions(*, session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Insert predictions (dicts of `Prediction` columns, all with the same keys),
    ignoring any that exist.

    Unique (image, model version) plus ``ON CONFLICT DO NOTHING`` makes a redelivered
    or concurrently run batch harmless. Returns how many rows were inserted.
    """
    return len(
        insert_ignore(
            session=session,
            model=Prediction,
            rows=rows,
            conflict=("image_id", "model_version_id"),
            returning="id",
        )
    )


def insert_ignore(
    *,
    session: Session,
    model: type[Base],
    rows: Sequence[dict[str, Any]],
    conflict: tuple[str, ...],
    returning: str,
) -> list[Any]:
    """Insert ``rows`` (dicts with the same keys) into ``model``'s table, skipping those
    that conflict on ``conflict``; returns the ``returning`` column of the inserted rows.

    One statement per `INSERT_CHUNK` rows, from `_insert_ignore_statement`: compiled
    once per process for each number of rows, not on every call."""
    if not rows:
        return []
    columns = tuple(rows[0])
    connection = session.connection()
    out: list[Any] = []
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start : start + INSERT_CHUNK]
        stmt = _insert_ignore_statement(model, columns, len(chunk), conflict, returning)
        out.extend(connection.execute(stmt, _rows_as_params(chunk, columns)).scalars())
    return out


def find_stale_images(
    *, session: Session, before: datetime, limit: int, queued: bool = True
) -> list[Image]:
    """Images queued, or processing, since before ``before``: oldest first, at most ``limit``.

    Queued ones are judged by ``queued_at`` (last enqueue), processing ones by
    ``updated_at`` (the claim); ``queued=False`` leaves queued ones out. Rows are
    locked, skipping rows another transaction holds (PostgreSQL), so concurrent
    reconcilers do not both take an image.
    """
    stale = (Image.status == ImageStatus.PROCESSING) & (Image.updated_at < before)
    if queued:
        waiting = func.coalesce(Image.queued_at, Image.created_at) < before
        stale = stale | ((Image.status == ImageStatus.QUEUED) & waiting)
    stmt = (
        select(Image).where(stale).order_by(Image.id).limit(limit).with_for_update(skip_locked=True)
    )
    return list(session.scalars(stmt))


def unfinished_image_ids(*, session: Session, bucket: str, queued_before: datetime) -> list[int]:
    """Ids of the images in ``bucket`` still queued or processing that were last
    enqueued before ``queued_before``, ascending."""
    stmt = (
        select(Image.id)
        .where(
            Image.bucket == bucket,
            Image.status.in_([ImageStatus.QUEUED, ImageStatus.PROCESSING]),
            func.coalesce(Image.queued_at, Image.created_at) < queued_before,
        )
        .order_by(Image.id)
    )
    return list(session.scalars(stmt))


def images_with_predictions(
    *, session: Session, bucket: str, model_version_id: int | None
) -> list[tuple[Image, Prediction | None]]:
    """Every image in ``bucket`` with its prediction from that model version (or None)."""
    on = (Prediction.image_id == Image.id) & (Prediction.model_version_id == model_version_id)
    stmt = (
        select(Image, Prediction)
        .outerjoin(Prediction, on)
        .where(Image.bucket == bucket)
        .order_by(Image.key, Image.id)
    )
    return [(image, prediction) for image, prediction in session.execute(stmt).tuples()]


class ServedVersion(NamedTuple):
    """The little a worker needs to know which model to serve and where to get it."""

    id: int
    sha256: str
    location: str


def get_served_model_versions(
    *, session: Session
) -> tuple[ServedVersion | None, ServedVersion | None]:
    """The active model version and the one in shadow, if any (ids, sha256s and
    locations, no cards): the one small query a worker runs before each batch."""
    rows = session.execute(
        select(ModelVersion.id, ModelVersion.sha256, ModelVersion.location, ModelVersion.active)
        .where(ModelVersion.active.is_(True) | ModelVersion.shadow.is_(True))
        .order_by(ModelVersion.id)
    ).all()
    active = next((ServedVersion(*r[:3]) for r in rows if r.active), None)
    shadow = next((ServedVersion(*r[:3]) for r in rows if not r.active), None)
    return active, shadow
