"""classify_pending, the micro-batch behind the wake-ups that single images send, on
SQLite and PostgreSQL: a lone image is classified by the call its wake-up starts;
whatever waits goes together up to the batch size; a full batch sends another wake-up;
images another task holds are left to it, and a task takes its own back.

This module's database is its own (tests/worker/conftest.py), and every test leaves
nothing queued: a micro-batch takes whatever is queued in the database.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select, update
from worker_helpers import register

from deepscreen import taskqueue
from deepscreen.config import Settings
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageStatus, Prediction
from deepscreen.db.session import session_scope
from worker.classify import classify_batch
from worker.microbatch import classify_pending
from worker.runtime import Runtime

MakeImages = Callable[..., list[str]]


def rows(runtime: Runtime, ids: list[int]) -> list[Image]:
    with session_scope(runtime.session_factory) as session:
        found = list(session.scalars(select(Image).where(Image.id.in_(ids)).order_by(Image.id)))
        session.expunge_all()
    return found


def predicted(runtime: Runtime, ids: list[int]) -> list[int]:
    with session_scope(runtime.session_factory) as session:
        return sorted(
            session.scalars(select(Prediction.image_id).where(Prediction.image_id.in_(ids)))
        )


def test_a_lone_image_is_classified_by_the_call_its_wake_up_starts(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given one queued image and nothing else waiting
    make_images(folder, 1, corrupt=False)
    [image_id] = register(runtime, folder)
    woken: list[bool] = []
    # When the worker takes its wake-up
    outcome = classify_pending(runtime=runtime, task_id="lone", wake=lambda: woken.append(True))
    # Then that very call classifies it alone, without waiting for company
    assert outcome.classified == [image_id] and outcome.images == [image_id]
    [image] = rows(runtime, [image_id])
    assert (image.status, image.claimed_by, image.attempts) == (ImageStatus.DONE, "lone", 1)
    assert woken == []  # a batch that was not full leaves nobody behind
    # And a wake-up that finds nothing queued does nothing
    assert classify_pending(runtime=runtime, task_id="late").images == []


def test_what_waits_goes_together_up_to_the_batch_size(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given 10 images queued at once (say, while every worker was busy), batches of 4
    assert runtime.settings.classify_batch_size == 4
    make_images(folder, 10, corrupt=False)
    ids = register(runtime, folder)
    woken: list[str] = []
    # When wake-ups are taken one after the other
    batches = []
    for n in range(4):
        task = f"wake-{n}"
        outcome = classify_pending(
            runtime=runtime, task_id=task, wake=lambda t=task: woken.append(t)
        )
        batches.append(outcome.classified)
    # Then the oldest go first, 4 at a time, and the last wake-up finds nothing
    assert [len(b) for b in batches] == [4, 4, 2, 0]
    assert sorted(i for b in batches for i in b) == ids
    # And each full batch sent another wake-up, for the images still waiting
    assert woken == ["wake-0", "wake-1"]
    assert predicted(runtime, ids) == ids
    assert {image.claimed_by for image in rows(runtime, ids)} == {"wake-0", "wake-1", "wake-2"}


def test_two_workers_claiming_at_once_take_different_images(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given 8 queued images and a second worker process (own engine) with the same code
    make_images(folder, 8, corrupt=False)
    ids = register(runtime, folder)
    other = Runtime(runtime.settings)
    try:
        # When both drain the queue with wake-ups at the same time
        def drain(args: tuple[Runtime, str]) -> list[int]:
            rt, name = args
            done: list[int] = []
            for n in range(6):
                done += classify_pending(runtime=rt, task_id=f"{name}-{n}").classified
            return done

        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(drain, [(runtime, "a"), (other, "b")])
        # Then every image was classified once, by one of them
        assert sorted(first + second) == ids and not set(first) & set(second)
        assert predicted(runtime, ids) == ids
        assert {image.status for image in rows(runtime, ids)} == {ImageStatus.DONE}
    finally:
        other.close()


def test_an_image_another_task_holds_is_left_to_it_and_its_own_task_takes_it_back(
    runtime: Runtime, folder: Path, make_images: MakeImages
) -> None:
    # Given an image a live task has just claimed (it is classifying it now)
    make_images(folder, 1, corrupt=False)
    [image_id] = register(runtime, folder)
    with session_scope(runtime.session_factory) as session:
        session.execute(
            update(Image)
            .where(Image.id == image_id)
            .values(
                status=ImageStatus.PROCESSING, claimed_by="holder", started_at=utcnow(), attempts=1
            )
        )
    # When another task's message names it (a reconciler's, or a duplicate)
    outcome = classify_batch([image_id], runtime=runtime, task_id="other")
    # Then it is left to the holder: no second classification
    assert outcome.skipped == [image_id] and predicted(runtime, [image_id]) == []
    assert classify_pending(runtime=runtime, task_id="other").images == []
    # When the holder's own message comes back (redelivered after a crash, or retried)
    outcome = classify_pending(runtime=runtime, task_id="holder")
    # Then it takes the image back and classifies it
    assert outcome.classified == [image_id]
    [image] = rows(runtime, [image_id])
    assert (image.status, image.attempts) == (ImageStatus.DONE, 2)


def test_a_single_image_sends_a_wake_up_and_full_batches_name_their_ids(
    tmp_path: Path,
) -> None:
    # Given the embedded broker
    settings = Settings(data_dir=tmp_path / "data")
    app = taskqueue.create_celery(settings)
    # When one image is enqueued, then 5 with batches of 2
    assert taskqueue.enqueue_classify(app, [7], batch_size=2) == 1
    assert taskqueue.enqueue_classify(app, [1, 2, 3, 4, 5], batch_size=2) == 3
    # Then the lone image and the remainder send wake-ups, with no delay (no eta, no
    # countdown), and the full batches name their ids
    sent = []
    for path in sorted((settings.queue_dir / "messages").glob("*.msg")):
        message = json.loads(path.read_text())
        sent.append((message["headers"]["task"], message["headers"]["eta"]))
    assert sorted(sent) == sorted(
        [
            (taskqueue.CLASSIFY_PENDING, None),
            (taskqueue.CLASSIFY_BATCH, None),
            (taskqueue.CLASSIFY_BATCH, None),
            (taskqueue.CLASSIFY_PENDING, None),
        ]
    )
