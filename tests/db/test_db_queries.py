"""Query helpers on both databases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import ExecutionContext
from sqlalchemy.engine.default import CACHE_HIT
from sqlalchemy.orm import Session

from deepscreen.db import queries
from deepscreen.db.models import Image, ImageSource, ImageStatus, ModelVersion
from deepscreen.storage import ObjectInfo


def listed(bucket: str, key: str, etag: str, size: int | None = 1) -> ObjectInfo:
    """A listed object, as ingestion hands it to register_images."""
    return ObjectInfo(bucket, key, etag, size, datetime.now(UTC))  # type: ignore[arg-type]


def count(session: Session, bucket: str) -> int:
    return session.scalar(select(func.count()).where(Image.bucket == bucket)) or 0


def test_register_inserts_queued_images_and_returns_their_ids(
    db_session: Session, bucket: str
) -> None:
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    objects = [listed(bucket, "a.jpg", "e1", 10), listed(bucket, "b.jpg", "e2", None)]
    ids = queries.register_images(
        session=db_session, objects=objects, source=ImageSource.SCAN, now=now
    )
    assert len(ids) == 2 and ids == sorted(ids)
    images = queries.get_images(session=db_session, ids=ids)
    assert [(i.key, i.etag, i.size) for i in images] == [("a.jpg", "e1", 10), ("b.jpg", "e2", None)]
    for image in images:
        assert image.status is ImageStatus.QUEUED
        assert image.source is ImageSource.SCAN
        assert image.queued_at == now == image.created_at
        assert image.attempts == 0


def test_register_is_idempotent(db_session: Session, bucket: str) -> None:
    # Given objects registered once
    objects = [listed(bucket, f"{n}.jpg", "e") for n in range(5)]
    first = queries.register_images(session=db_session, objects=objects, source=ImageSource.SCAN)
    # When the same listing is registered again
    again = queries.register_images(session=db_session, objects=objects, source=ImageSource.SCAN)
    # Then nothing new is inserted
    assert len(first) == 5
    assert again == []
    assert count(db_session, bucket) == 5


def test_register_returns_only_the_new_ones(db_session: Session, bucket: str) -> None:
    queries.register_images(
        session=db_session, objects=[listed(bucket, "old.jpg", "e1")], source=ImageSource.SCAN
    )
    ids = queries.register_images(
        session=db_session,
        objects=[
            listed(bucket, "old.jpg", "e1"),  # known
            listed(bucket, "old.jpg", "e2"),  # new version of a known key
            listed(bucket, "new.jpg", "e1"),
        ],
        source=ImageSource.EVENT,
    )
    images = queries.get_images(session=db_session, ids=ids)
    assert sorted((i.key, i.etag) for i in images) == [("new.jpg", "e1"), ("old.jpg", "e2")]


def test_register_collapses_duplicates_within_one_call(db_session: Session, bucket: str) -> None:
    obj = listed(bucket, "twice.jpg", "e")
    ids = queries.register_images(session=db_session, objects=[obj, obj], source=ImageSource.API)
    assert len(ids) == 1


def test_register_handles_more_rows_than_one_statement(db_session: Session, bucket: str) -> None:
    n = queries.INSERT_CHUNK * 2 + 7
    objects = (listed(bucket, f"k/{i:05d}.jpg", "e") for i in range(n))  # any iterable
    ids = queries.register_images(session=db_session, objects=objects, source=ImageSource.SCAN)
    assert len(set(ids)) == n == count(db_session, bucket)


def test_registering_one_object_reuses_the_compiled_statement(
    db_session: Session, bucket: str
) -> None:
    """Events and submissions register one object per request: its INSERT ... ON
    CONFLICT must come from SQLAlchemy's statement cache, not be compiled every time
    (the dialects' insert constructs have no cache key)."""
    contexts: list[ExecutionContext] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO IMAGES"):
            contexts.append(args[-2])

    connection = db_session.connection()
    event.listen(connection, "before_cursor_execute", record)
    try:
        # Given one object registered (the statement is compiled, or already cached)
        now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
        first = queries.register_images(
            session=db_session,
            objects=[listed(bucket, "one.jpg", "e1", 7)],
            source=ImageSource.EVENT,
            now=now,
        )
        # When another one, and then the first again, are registered alone
        second = queries.register_images(
            session=db_session, objects=[listed(bucket, "two.jpg", "e2")], source=ImageSource.API
        )
        again = queries.register_images(
            session=db_session, objects=[listed(bucket, "one.jpg", "e1")], source=ImageSource.EVENT
        )
    finally:
        event.remove(connection, "before_cursor_execute", record)
    # Then each is one statement and the later ones are cache hits
    assert len(contexts) == 3
    assert [c.cache_hit == CACHE_HIT for c in contexts[1:]] == [True, True]
    # And the rows are as the many-row path writes them; a known object returns nothing
    assert len(first) == 1 and len(second) == 1 and again == []
    one, two = queries.get_images(session=db_session, ids=first + second)
    assert (one.key, one.etag, one.size, one.source) == ("one.jpg", "e1", 7, ImageSource.EVENT)
    assert one.status is ImageStatus.QUEUED and one.attempts == 0
    assert one.queued_at == now == one.created_at == one.updated_at
    assert (two.key, two.size, two.source, two.status) == (
        "two.jpg",
        1,
        ImageSource.API,
        ImageStatus.QUEUED,
    )
    assert count(db_session, bucket) == 2


def test_register_nothing(db_session: Session) -> None:
    assert queries.register_images(session=db_session, objects=[], source=ImageSource.SCAN) == []


def test_get_images_orders_by_id_and_skips_unknown(
    db_session: Session, add_image: Callable[..., Image]
) -> None:
    a, b = add_image("a.jpg"), add_image("b.jpg")
    found = queries.get_images(session=db_session, ids=[b.id, 10**12, a.id, b.id])
    assert [i.id for i in found] == [a.id, b.id]
    assert queries.get_images(session=db_session, ids=[]) == []


def test_count_images_by_status(
    db_session: Session, bucket: str, add_image: Callable[..., Image]
) -> None:
    add_image("1.jpg")
    add_image("2.jpg", status=ImageStatus.DONE)
    add_image("3.jpg", status=ImageStatus.DONE)
    counts = queries.count_images_by_status(session=db_session, buckets=[bucket])
    assert counts == {
        ImageStatus.QUEUED: 1,
        ImageStatus.PROCESSING: 0,
        ImageStatus.DONE: 2,
        ImageStatus.FAILED: 0,
    }


def test_active_model_version(
    db_session: Session, add_model_version: Callable[..., ModelVersion]
) -> None:
    add_model_version("old")
    assert queries.get_active_model_version(session=db_session) is None
    current = add_model_version("current", active=True)
    assert queries.get_active_model_version(session=db_session) == current
