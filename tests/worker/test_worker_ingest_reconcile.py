"""Ingestion and the reconciler, the plain functions behind the scan and reconcile tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from deepscreen.commands.ingest import ingest
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageStatus
from deepscreen.db.session import session_scope
from deepscreen.storage import LocalStore
from worker.classify import max_attempts
from worker.reconcile import reconcile
from worker.runtime import Runtime

MakeImages = Callable[..., list[str]]


class Recorder:
    """An enqueue callable that records batches, and checks they are committed when sent."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.batches: list[list[int]] = []

    def __call__(self, ids: Sequence[int]) -> int:
        # A separate session sees only committed rows.
        with session_scope(self.runtime.session_factory) as session:
            visible = queries.get_images(session=session, ids=ids)
        assert [i.id for i in visible] == sorted(ids), "enqueued before commit"
        size = self.runtime.settings.classify_batch_size
        self.batches.extend(list(ids[i : i + size]) for i in range(0, len(ids), size))
        return (len(ids) + size - 1) // size

    @property
    def ids(self) -> list[int]:
        return sorted(i for batch in self.batches for i in batch)


def test_ingest_registers_new_images_and_enqueues_them_after_commit(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given 9 images, 3 corrupt files (still images by name) and a file of another kind
    make_images(folder, 9)
    (folder / "notes.txt").write_text("not an image")
    sent = Recorder(runtime)
    # When the folder is ingested
    summary = ingest(
        LocalStore(folder),
        settings=runtime.settings,
        session_factory=runtime.session_factory,
        enqueue=sent,
    )
    # Then every image is registered once, queued, and sent in batches of the batch size (4)
    assert (summary.new, summary.known, summary.skipped) == (12, 0, 1)
    assert summary.tasks == len(sent.batches) == 3
    assert [len(b) for b in sent.batches] == [4, 4, 4]
    with session_scope(runtime.session_factory) as session:
        rows = queries.get_images(session=session, ids=sent.ids)
    assert len(rows) == 12
    assert {r.status for r in rows} == {ImageStatus.QUEUED}
    assert {r.bucket for r in rows} == {folder.as_uri()}


def test_ingesting_again_queues_nothing_but_new_files(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    make_images(folder, 3, corrupt=False)
    store = LocalStore(folder)
    first = ingest(
        store,
        settings=runtime.settings,
        session_factory=runtime.session_factory,
        enqueue=Recorder(runtime),
    )
    # When it runs again with one file added and one file changed
    (folder / "new.jpg").write_bytes((folder / "img001.jpg").read_bytes() + b"\0")
    (folder / "img000.png").write_bytes((folder / "img002.png").read_bytes())
    sent = Recorder(runtime)
    again = ingest(
        store, settings=runtime.settings, session_factory=runtime.session_factory, enqueue=sent
    )
    # Then only the new file and the new version are registered and sent
    assert (first.new, again.new, again.known) == (3, 2, 2)
    assert len(sent.ids) == 2
    with session_scope(runtime.session_factory) as session:
        keys = {(i.key, i.etag) for i in queries.get_images(session=session, ids=sent.ids)}
    assert {k for k, _ in keys} == {"new.jpg", "img000.png"}
    # And a third run sends nothing at all
    sent = Recorder(runtime)
    third = ingest(
        store, settings=runtime.settings, session_factory=runtime.session_factory, enqueue=sent
    )
    assert (third.new, third.known, third.tasks, sent.batches) == (0, 4, 0, [])


def test_reconcile_requeues_stale_images_and_gives_up_on_exhausted_ones(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    settings = runtime.settings
    make_images(folder, 5, corrupt=False)
    registered = Recorder(runtime)
    ingest(
        LocalStore(folder),
        settings=settings,
        session_factory=runtime.session_factory,
        enqueue=registered,
    )
    stale_queued, stale_processing, exhausted, fresh, done = registered.ids
    now = utcnow()
    long_ago = now - timedelta(seconds=settings.reconcile_age + 60)
    with session_scope(runtime.session_factory) as session:
        session.execute(update(Image).where(Image.id == stale_queued).values(queued_at=long_ago))
        for image_id, attempts in ((stale_processing, 1), (exhausted, max_attempts(settings))):
            session.execute(
                update(Image)
                .where(Image.id == image_id)
                .values(status=ImageStatus.PROCESSING, updated_at=long_ago, attempts=attempts)
            )
        session.execute(
            update(Image)
            .where(Image.id == done)
            .values(status=ImageStatus.DONE, queued_at=long_ago, updated_at=long_ago)
        )
    # When the reconciler runs
    sent = Recorder(runtime)
    outcome = reconcile(
        settings=settings, session_factory=runtime.session_factory, enqueue=sent, now=now
    )
    # Then the stale ones are queued again and sent, the exhausted one fails, others stay
    assert sorted(outcome.requeued) == sent.ids == sorted([stale_queued, stale_processing])
    assert outcome.gave_up == [exhausted]
    with session_scope(runtime.session_factory) as session:
        rows = {i.id: i for i in queries.get_images(session=session, ids=registered.ids)}
    for image_id in (stale_queued, stale_processing):
        assert rows[image_id].status is ImageStatus.QUEUED
        assert rows[image_id].queued_at == now
    assert rows[exhausted].status is ImageStatus.FAILED
    assert rows[exhausted].failure_reason == f"gave up after {max_attempts(settings)} attempts"
    assert rows[fresh].status is ImageStatus.QUEUED and rows[fresh].queued_at < now
    assert rows[done].status is ImageStatus.DONE
    # And running it again at once finds nothing to do
    again = reconcile(
        settings=settings,
        session_factory=runtime.session_factory,
        enqueue=Recorder(runtime),
        now=now,
    )
    assert (again.requeued, again.gave_up) == ([], [])
