"""Micro-batching end to end: submissions through the API (a real app on PostgreSQL,
Redis and SeaweedFS) classified by a real ``deepscreen worker``. A burst of single
submissions is classified in far fewer tasks than images, none lost or classified
twice; a lone submission at idle is classified by the very wake-up it sent, alone, and
that wake-up carries no delay."""

from __future__ import annotations

import base64
import io
import json
import math
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from pipeline_helpers import Process, bucket_results, pending, wait_for
from sample_images import CORRUPT_FILES
from sqlalchemy import Engine, select

from dashboard import create_app
from dashboard.accounts import mint_token
from dashboard.auth import new_user
from deepscreen import taskqueue
from deepscreen.config import Settings
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus
from deepscreen.db.moderation import ApiToken, Role
from deepscreen.db.session import make_session_factory, session_scope
from deepscreen.storage import make_s3_client

#: Seconds for the worker to start, load the model and classify everything.
DEADLINE = 300
BURST = 200


@pytest.fixture
def submissions(stack_settings: Settings, stack_engine: Engine) -> tuple[Settings, str]:
    """Settings with submissions into a bucket of their own; a moderator's API token."""
    bucket = f"submit-{secrets.token_hex(4)}"
    make_s3_client(stack_settings).create_bucket(Bucket=bucket)
    settings = replace(stack_settings, submission_url=f"s3://{bucket}/api/")
    token, token_hash = mint_token()
    with session_scope(make_session_factory(stack_engine)) as session:
        user = new_user("submitter", Role.MODERATOR, "a long enough password")
        session.add(user)
        session.flush()
        session.add(ApiToken(user_id=user.id, name="t", token_hash=token_hash, created_at=utcnow()))
    return settings, token


def submit(app: Flask, token: str, data: bytes) -> int:
    """One submission through the API (its own test client, so threads can share the app);
    the image id."""
    response = app.test_client().post(
        "/api/v1/images",
        data={"image": (io.BytesIO(data), "face.jpg")},
        content_type="multipart/form-data",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 202, response.text
    return int(response.get_json()["id"])


def classify_messages(settings: Settings) -> list[tuple[dict[str, Any], list[Any]]]:
    """(headers, args) of the messages waiting in the classify queue, oldest first."""
    import redis

    client = redis.Redis.from_url(settings.broker_url)
    try:
        raw = client.lrange(taskqueue.CLASSIFY_QUEUE, 0, -1)
    finally:
        client.close()
    messages = [json.loads(m) for m in reversed(raw)]  # kombu pushes on the left
    return [(m["headers"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]


def submitted(engine: Engine) -> list[Image]:
    with session_scope(make_session_factory(engine)) as session:
        rows = list(session.scalars(select(Image).where(Image.source == ImageSource.API)))
        session.expunge_all()
    return rows


def test_a_burst_of_single_submissions_is_classified_in_few_tasks_none_lost_or_twice(
    submissions: tuple[Settings, str],
    stack_env: dict[str, str],
    stack_engine: Engine,
    start_process: Callable[..., Process],
    sample_images: Callable[[int], dict[str, bytes]],
) -> None:
    settings, token = submissions
    app = create_app(settings)
    images = [data for name, data in sample_images(20).items() if name not in CORRUPT_FILES]
    # Given 200 images submitted one per request, 8 at a time, while no worker runs
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: submit(app, token, images[i % len(images)]), range(BURST)))
    took = time.monotonic() - started
    assert len(set(ids)) == BURST
    # Then they wait as one wake-up, not 200 messages: each registration found the
    # previous wake-up still untaken (one more per expiry of its key, on a slow machine)
    tasks = [h["task"] for h, _ in classify_messages(settings)]
    assert set(tasks) == {taskqueue.CLASSIFY_PENDING}
    assert len(tasks) <= 1 + int(took // taskqueue.WAKE_UP_TTL)
    # When a worker with two processes starts
    worker = start_process(["worker", "--concurrency", "2"], stack_env)
    bucket = settings.submission_url.removeprefix("s3://").split("/")[0]
    wait_for(
        lambda: pending(stack_engine, bucket) == 0 or worker.proc.poll() is not None,
        timeout=DEADLINE,
        what="every submission to be classified",
    )
    assert worker.proc.poll() is None, worker.output()
    # Then every image is done with exactly one prediction, classified on its first try
    rows, predictions = bucket_results(stack_engine, bucket)
    assert sorted(r.id for r in rows) == sorted(ids)
    assert {r.status for r in rows} == {ImageStatus.DONE}
    assert all(predictions[r.id] == 1 for r in rows)
    assert {r.attempts for r in rows} == {1}
    # And by far fewer tasks than images: full batches, each waking the next
    tasks = {r.claimed_by for r in rows}
    batch = settings.classify_batch_size
    assert len(tasks) < BURST
    assert len(tasks) <= 2 * math.ceil(BURST / batch)
    received = worker.output().count(f"Task {taskqueue.CLASSIFY_PENDING}[")
    assert 0 < received < BURST


def test_a_lone_submission_at_idle_is_classified_alone_by_the_wake_up_it_sent(
    submissions: tuple[Settings, str],
    stack_env: dict[str, str],
    stack_engine: Engine,
    start_process: Callable[..., Process],
    sample_images: Callable[[int], dict[str, bytes]],
) -> None:
    settings, token = submissions
    app = create_app(settings)
    image = next(data for name, data in sample_images(1).items() if name not in CORRUPT_FILES)
    # Given an idle worker
    worker = start_process(["worker", "--concurrency", "2"], stack_env)
    wait_for(lambda: " ready." in worker.output(), timeout=120, what="the worker to start")
    # When one image is submitted
    image_id = submit(app, token, image)
    wait_for(
        lambda: (
            {r.status for r in submitted(stack_engine)} == {ImageStatus.DONE}
            or worker.proc.poll() is not None
        ),
        timeout=DEADLINE,
        what="the submission to be classified",
    )
    # Then it is classified, alone, by one task that claimed nothing else
    [row] = submitted(stack_engine)
    assert row.id == image_id and row.status is ImageStatus.DONE
    assert row.claimed_by is not None
    log = worker.output()
    assert f"Task {taskqueue.CLASSIFY_PENDING}[{row.claimed_by}] received" in log
    assert f"task {row.claimed_by}: 1 classified, 0 failed, 0 skipped" in log


def test_the_wake_up_carries_no_delay_and_once_taken_the_next_image_sends_another(
    submissions: tuple[Settings, str],
    sample_images: Callable[[int], dict[str, bytes]],
) -> None:
    settings, token = submissions
    app = create_app(settings)
    images = [data for name, data in sample_images(3).items() if name not in CORRUPT_FILES]
    celery = taskqueue.create_celery(settings)
    try:
        # Given one submission, with no worker running
        first = submit(app, token, images[0])
        # Then one wake-up waits, naming it, to be run as soon as a worker is free (no
        # eta, no countdown: the image does not wait for company)
        [(headers, args)] = classify_messages(settings)
        assert headers["task"] == taskqueue.CLASSIFY_PENDING
        assert headers["eta"] is None  # a countdown would be an eta too
        assert args == [[first]]
        # When a second image is submitted before a worker took it, no second message
        # is sent: the worker that takes the first one claims both
        submit(app, token, images[1])
        assert len(classify_messages(settings)) == 1
        # When a worker takes the wake-up (it marks it taken before it claims), the
        # next image sends a new one
        taskqueue.wake_up_taken(celery)
        third = submit(app, token, images[2])
        assert [args for _, args in classify_messages(settings)] == [[[first]], [[third]]]
    finally:
        celery.close()
