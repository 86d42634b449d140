"""Bucket events end to end, with no scan: a put into a real SeaweedFS -> its filer webhook
(``notification.toml``) -> the dashboard's ``/events/seaweedfs`` (served on a free port)
-> PostgreSQL + Redis -> a real ``deepscreen worker`` subprocess -> a verdict. No
``ingest`` and no beat run until the verdicts are in; a scan afterwards finds every
object already registered under the same etag."""

from __future__ import annotations

import io
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from PIL import Image as PILImage
from pipeline_helpers import Process, bucket_results, clean_env, pending, wait_for
from services import free_port, unavailable
from sqlalchemy import Engine
from werkzeug.serving import make_server

from dashboard import create_app
from deepscreen.commands.ingest import ingest
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.models import ImageSource, ImageStatus
from deepscreen.db.session import make_engine, make_session_factory
from deepscreen.seaweedfs import LocalSeaweedFS, SeaweedFSUnavailable, webhook_notification
from deepscreen.storage import S3Store, make_s3_client

#: Seconds for the worker to start, load the model and classify everything.
DEADLINE = 300
MiB = 1024 * 1024


@dataclass
class EventStack:
    """SeaweedFS posting to a live dashboard, on PostgreSQL and this run's Redis."""

    settings: Settings
    bucket: str
    client: BaseClient
    store: S3Store
    engine: Engine
    env: dict[str, str]


@pytest.fixture
def event_stack(
    tmp_path: Path, make_postgres_database: Callable[[], str], redis_broker_url: str
) -> Iterator[EventStack]:
    # SeaweedFS must know the dashboard's address before it starts: pick the port first
    port = free_port()
    secret = secrets.token_urlsafe(24)
    bucket = f"events-{secrets.token_hex(4)}"
    notification = webhook_notification(
        f"http://127.0.0.1:{port}/events/seaweedfs",
        bearer_token=secret,
        path_prefixes=[f"/buckets/{bucket}/"],
    )
    try:
        s3 = LocalSeaweedFS.start(tmp_path / "seaweedfs", notification=notification)
    except SeaweedFSUnavailable as exc:
        unavailable(str(exc))
    with s3:
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=make_postgres_database(),
            broker_url=redis_broker_url,
            events_secret=secret,
            events_prefixes=(f"{bucket}/incoming/",),
            inference_threads=1,
            s3_max_attempts=3,
            **s3.settings_values(),
        )
        migrate.upgrade(settings)
        server = make_server("127.0.0.1", port, create_app(settings), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        engine = make_engine(settings)
        client = make_s3_client(settings)
        client.create_bucket(Bucket=bucket)
        env = clean_env(
            data_dir=settings.data_dir,
            database_url=settings.database_url,
            broker_url=settings.broker_url,
            inference_threads=1,
            worker_concurrency=1,
            **s3.settings_values(),
        )
        try:
            yield EventStack(settings, bucket, client, S3Store(bucket, client), engine, env)
        finally:
            server.shutdown()
            thread.join(10)
            engine.dispose()


def noise_png(side: int) -> bytes:
    """A PNG of random pixels: incompressible, so ``side`` 1400 is over 5 MiB."""
    pixels = np.random.default_rng(7).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def test_a_put_into_seaweedfs_gets_a_verdict_with_no_scan(
    event_stack: EventStack,
    start_process: Callable[..., Process],
    sample_images: Callable[[int], dict[str, bytes]],
) -> None:
    stack, store = event_stack, event_stack.store
    # Given a worker on the stack, and no ingest or beat anywhere
    worker = start_process(["worker", "--concurrency", "1"], stack.env)
    # When images (and 3 corrupt files) are put under the prefix, one by multipart upload,
    # with a text file and an image outside the prefix next to them
    files = sample_images(4)
    for name, data in files.items():
        store.put(f"incoming/{name}", data)
    large = noise_png(1400)
    assert len(large) > 5 * MiB
    stack.client.upload_fileobj(
        io.BytesIO(large),
        stack.bucket,
        "incoming/large.png",
        Config=TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB),
    )
    store.put("incoming/readme.txt", b"not an image")
    store.put("elsewhere/ignored.jpg", next(iter(files.values())))
    expected = {f"incoming/{name}" for name in files} | {"incoming/large.png"}
    # Then every image of the prefix is registered from its event and gets a verdict
    wait_for(
        lambda: (
            (_keys(stack) == expected and pending(stack.engine, stack.bucket) == 0)
            or worker.proc.poll() is not None
        ),
        timeout=DEADLINE,
        what="every put image to be done or failed",
    )
    assert worker.proc.poll() is None, worker.output()
    images, predictions = bucket_results(stack.engine, stack.bucket)
    assert {i.key for i in images} == expected
    assert all(i.source is ImageSource.EVENT for i in images)
    failed = {i.key for i in images if i.status is ImageStatus.FAILED}
    assert failed == {"incoming/corrupt.jpg", "incoming/truncated.png", "incoming/halfway.jpg"}
    done = [i for i in images if i.status is ImageStatus.DONE]
    assert len(done) == 5 and all(predictions[i.id] == 1 for i in done)
    # The multipart object carries S3's multipart etag ("<md5 of md5s>-<parts>")
    [multipart] = [i for i in images if i.key == "incoming/large.png"]
    assert multipart.etag.endswith("-2") and multipart.size == len(large)

    # And a scan of the same prefix afterwards registers nothing again: the events'
    # etags are the ones an S3 listing reports
    sent: list[int] = []

    def enqueue(ids: Sequence[int]) -> int:
        sent.extend(ids)
        return 0

    summary = ingest(
        S3Store(stack.bucket, stack.client, prefix="incoming/"),
        settings=stack.settings,
        session_factory=make_session_factory(stack.engine),
        enqueue=enqueue,
    )
    assert (summary.new, summary.known, summary.skipped, sent) == (0, len(expected), 1, [])

    # And a delete registers nothing; an overwrite is a new version, classified too
    stack.client.delete_object(Bucket=stack.bucket, Key="incoming/corrupt.jpg")
    store.put("incoming/halfway.jpg", next(iter(files.values())))
    wait_for(
        lambda: (
            len(bucket_results(stack.engine, stack.bucket)[0]) == len(expected) + 1
            and pending(stack.engine, stack.bucket) == 0
        ),
        timeout=60,
        what="the overwritten image's new version to be done",
    )
    images, _ = bucket_results(stack.engine, stack.bucket)
    versions = sorted((i.status for i in images if i.key == "incoming/halfway.jpg"), key=str)
    assert versions == [ImageStatus.DONE, ImageStatus.FAILED]
    assert any(i.key == "incoming/corrupt.jpg" for i in images)  # history is kept


def _keys(stack: EventStack) -> set[str]:
    images, _ = bucket_results(stack.engine, stack.bucket)
    return {i.key for i in images}
