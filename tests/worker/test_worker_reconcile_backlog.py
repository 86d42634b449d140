"""The reconciler with a backlog (issue 14, item 6): with an age of about a minute, an
image queued that long may simply be waiting its turn; it is enqueued again only
once the classify queue has no message left, while a dead worker's images are
enqueued again at once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from deepscreen import taskqueue
from deepscreen.commands.ingest import ingest
from deepscreen.config import Settings
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageStatus
from deepscreen.db.session import session_scope
from deepscreen.storage import LocalStore
from worker.reconcile import reconcile, waiting_classify_messages
from worker.runtime import Runtime

MakeImages = Callable[..., list[str]]


def register(runtime: Runtime, folder: Path, make_images: MakeImages, count: int) -> list[int]:
    """Ingest ``count`` images of ``folder``; their ids (their messages are dropped)."""
    make_images(folder, count, corrupt=False)
    ids: list[int] = []

    def keep(batch: Sequence[int]) -> int:
        ids.extend(batch)
        return 1

    ingest(
        LocalStore(folder),
        settings=runtime.settings,
        session_factory=runtime.session_factory,
        enqueue=keep,
    )
    return sorted(ids)


def test_stale_queued_images_wait_for_the_backlog_but_a_dead_workers_do_not(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given an image queued and one processing, both for longer than the reconciler's age
    settings = runtime.settings
    queued, processing = register(runtime, folder, make_images, 2)
    now = utcnow()
    long_ago = now - timedelta(seconds=settings.reconcile_age + 1)
    with session_scope(runtime.session_factory) as session:
        session.execute(update(Image).where(Image.id == queued).values(queued_at=long_ago))
        session.execute(
            update(Image)
            .where(Image.id == processing)
            .values(status=ImageStatus.PROCESSING, updated_at=long_ago, attempts=1)
        )
    sent: list[int] = []

    def enqueue(ids: Sequence[int]) -> int:
        sent.extend(ids)
        return 1

    # When the reconciler runs while 7 classify messages wait in the broker
    busy = reconcile(
        settings=settings,
        session_factory=runtime.session_factory,
        enqueue=enqueue,
        waiting_messages=lambda: 7,
        now=now,
    )
    # Then only the dead worker's image is enqueued again: the queued one may be one
    # of those 7 messages' images
    assert busy.requeued == sent == [processing]
    # When it runs again once the queue is empty
    idle = reconcile(
        settings=settings,
        session_factory=runtime.session_factory,
        enqueue=enqueue,
        waiting_messages=lambda: 0,
        now=now,
    )
    # Then the queued image has lost its message: it is enqueued again
    assert idle.requeued == [queued]
    # And when the broker cannot say, the age alone decides (as before)
    with session_scope(runtime.session_factory) as session:
        session.execute(update(Image).where(Image.id == queued).values(queued_at=long_ago))
    unknown = reconcile(
        settings=settings,
        session_factory=runtime.session_factory,
        enqueue=enqueue,
        waiting_messages=lambda: None,
        now=now,
    )
    assert unknown.requeued == [queued]


def test_the_classify_queue_is_counted_on_the_broker(tmp_path: Path) -> None:
    # Given the embedded broker with two classify messages and an ingest message
    settings = Settings(data_dir=tmp_path / "data")
    app = taskqueue.create_celery(settings)
    assert waiting_classify_messages(settings) == 0
    taskqueue.send(app, taskqueue.CLASSIFY_BATCH, args=[[1, 2]])
    taskqueue.send(app, taskqueue.CLASSIFY_BATCH, args=[[3]])
    taskqueue.send(app, taskqueue.INGEST, args=["file:///nowhere"])
    # Then the reconciler counts the classify ones
    assert waiting_classify_messages(settings) == 2
    # And an unreachable broker is "cannot say", not an error
    down = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0")
    assert waiting_classify_messages(down) is None
