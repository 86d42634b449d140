"""Webhooks end to end: a real ``deepscreen worker`` subprocess and ``deepscreen beat``
(the dispatcher) on Redis, PostgreSQL and SeaweedFS deliver every event type, signed,
to the receiver kit's example receiver on loopback, which was down for a while; and
``deepscreen run`` (embedded queue) delivering the verdicts of its run."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from loopback_receiver import LoopbackReceiver, load_example
from pipeline_helpers import Process, clean_env, deepscreen, ingest_bucket, pending, wait_for
from sample_images import CORRUPT_FILES
from services import free_port
from sqlalchemy import Engine, select

from deepscreen import taskqueue
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageStatus
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.db.webhooks import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from deepscreen.webhooks import (
    EVENT_TYPES,
    REVIEW_COMPLETED,
    VERDICT_CHANGED,
    VERDICT_CREATED,
    emit,
    new_secret,
    verify,
)

#: Seconds for the worker to start, load the model, classify and deliver.
DEADLINE = 300
IMAGES = 10


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def deliveries(engine: Engine, endpoint_id: int) -> list[WebhookDelivery]:
    with session_scope(make_session_factory(engine)) as session:
        stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        return list(session.scalars(stmt))


def test_a_receiver_down_for_a_while_gets_every_event_once_and_a_dead_one_is_disabled(
    stack_settings: Settings,
    stack_env: dict[str, str],
    stack_engine: Engine,
    fill_bucket: Callable[[int], str],
    start_process: Callable[..., Process],
    tmp_path: Path,
) -> None:
    factory = make_session_factory(stack_engine)
    example = load_example()
    secret = new_secret()
    handled: list[dict[str, Any]] = []
    answered: list[int] = []
    receiver = example.Receiver([secret], handled.append)
    receive = receiver.receive

    def counting(headers: dict[str, str], body: bytes) -> int:
        status = int(receive(headers, body))
        answered.append(status)
        return status

    receiver.receive = counting
    port = free_port()
    # Given the example receiver's URL (nothing listening yet) subscribed to every event
    # type, and a URL where nothing ever listens subscribed to verdict.created
    with session_scope(factory) as session:
        alive = WebhookEndpoint(
            url=f"http://127.0.0.1:{port}/hooks", secret=secret, event_types=list(EVENT_TYPES)
        )
        dead = WebhookEndpoint(
            url=f"http://127.0.0.1:{free_port()}/never",
            secret=new_secret(),
            event_types=[VERDICT_CREATED],
        )
        session.add_all([alive, dead])
        session.flush()
        alive_id, dead_id = alive.id, dead.id
    # ... and a worker and beat retrying every second, disabling after 12 s of failure
    env = {
        **stack_env,
        "DEEPSCREEN_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
        "DEEPSCREEN_WEBHOOK_RETRY_SCHEDULE": ",".join(["1"] * 30),
        "DEEPSCREEN_WEBHOOK_DISPATCH_INTERVAL": "1",
        "DEEPSCREEN_WEBHOOK_DISABLE_AFTER": "12",
        "DEEPSCREEN_WEBHOOK_CONNECT_TIMEOUT": "2",
        "DEEPSCREEN_WEBHOOK_READ_TIMEOUT": "5",
    }
    worker = start_process(["worker", "--concurrency", "1", "--loglevel", "INFO"], env)
    beat = start_process(["beat"], env)

    def running() -> bool:
        return worker.proc.poll() is None and beat.proc.poll() is None

    # When a bucket of images is ingested and classified (verdict.created each) ...
    bucket = fill_bucket(IMAGES)
    ingest_bucket(bucket, env, tmp_path)
    # ... and a moderator's decision emits review.completed and verdict.changed the way
    # the dashboard does: emitted in its transaction, enqueued by name after the commit
    with session_scope(factory) as session:
        data = {"image_id": 0, "action": "override", "final_label": "fake", "reviewer": "ann"}
        now = utcnow()
        decided = emit(session, REVIEW_COMPLETED, data, now=now)
        decided += emit(session, VERDICT_CHANGED, {**data, "before": {}}, now=now)
    app = taskqueue.create_celery(stack_settings)
    taskqueue.enqueue_deliveries(app, decided)
    wait_for(
        lambda: pending(stack_engine, bucket) == 0 or not running(),
        timeout=DEADLINE,
        what="every image to be classified",
    )
    assert running(), worker.output() + beat.output()
    expected = IMAGES + 2
    # ... while the receiver is down for a few failed attempts each
    wait_for(
        lambda: (
            (
                len(ds := deliveries(stack_engine, alive_id)) == expected
                and all(d.attempts >= 2 for d in ds)
            )
            or not running()
        ),
        timeout=60,
        what="two failed attempts of every delivery",
    )
    assert running(), worker.output() + beat.output()
    assert all(d.status is DeliveryStatus.PENDING for d in deliveries(stack_engine, alive_id))
    # ... and then comes back
    with serving(example.make_server(receiver, port=port)):
        wait_for(
            lambda: (
                all(
                    d.status is DeliveryStatus.SUCCEEDED for d in deliveries(stack_engine, alive_id)
                )
                or not running()
            ),
            timeout=60,
            what="every delivery to succeed once the receiver is back",
        )
        assert running(), worker.output() + beat.output()
        # When every delivery's message arrives once more (a redelivery)
        sent = len(answered)
        taskqueue.enqueue_deliveries(app, [d.id for d in deliveries(stack_engine, alive_id)])
        wait_for(
            lambda: len(re.findall(r"skipped: already succeeded", worker.output())) >= expected,
            timeout=60,
            what="the redelivered messages to be skipped",
        )
        # Then nothing was sent again
        assert len(answered) == sent
    # Then the receiver verified and handled every event exactly once
    assert answered and set(answered) == {200}
    with session_scope(factory) as session:
        events = {
            e.event_id: e
            for e in session.scalars(
                select(WebhookEvent)
                .join(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == alive_id)
            )
        }
        done = {
            i.id: i
            for i in session.scalars(
                select(Image).where(Image.bucket == bucket, Image.status == ImageStatus.DONE)
            )
        }
    handled_ids = [e["id"] for e in handled]
    assert len(handled_ids) == len(set(handled_ids)) == expected
    assert set(handled_ids) == set(events)
    assert sorted(e["type"] for e in handled) == sorted(
        [VERDICT_CREATED] * IMAGES + [REVIEW_COMPLETED, VERDICT_CHANGED]
    )
    created = [e["data"] for e in handled if e["type"] == VERDICT_CREATED]
    assert sorted(d["image_id"] for d in created) == sorted(done)
    for d in created:
        image = done[d["image_id"]]
        assert (d["bucket"], d["key"], d["sha256"]) == (image.bucket, image.key, image.sha256)
        assert d["final_label"] in ("real", "fake") and 0 <= d["score"] <= 1
    # ... after failed attempts while it was down
    assert all(d.attempts >= 3 for d in deliveries(stack_engine, alive_id))
    # ... and the endpoint that never answered was disabled, with the reason
    wait_for(
        lambda: not endpoint(stack_engine, dead_id).active or not running(),
        timeout=60,
        what="the dead endpoint to be disabled",
    )
    gone = endpoint(stack_engine, dead_id)
    assert gone.disabled_reason is not None
    assert re.fullmatch(
        r"failing since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: last error connection refused",
        gone.disabled_reason,
    )
    assert {d.status for d in deliveries(stack_engine, dead_id)} == {DeliveryStatus.FAILED}
    assert endpoint(stack_engine, alive_id).active


def endpoint(engine: Engine, endpoint_id: int) -> WebhookEndpoint:
    with session_scope(make_session_factory(engine)) as session:
        return session.get_one(WebhookEndpoint, endpoint_id)


def test_deepscreen_run_delivers_the_verdicts_of_its_run(
    tmp_path: Path, sample_images: Callable[[int], dict[str, bytes]]
) -> None:
    # Given an embedded setup (SQLite, filesystem queue) with an endpoint on loopback
    settings = Settings(data_dir=tmp_path / "data", inference_threads=1)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    receiver = LoopbackReceiver()
    try:
        secret = new_secret()
        with session_scope(make_session_factory(engine)) as session:
            session.add(
                WebhookEndpoint(url=receiver.url, secret=secret, event_types=[VERDICT_CREATED])
            )
        folder = tmp_path / "photos"
        folder.mkdir()
        for name, data in sample_images(4).items():
            (folder / name).write_bytes(data)
        env = clean_env(
            data_dir=settings.data_dir, inference_threads=1, webhook_allow_networks="127.0.0.0/8"
        )
        # When a folder of 4 images and 3 corrupt files is run
        run = deepscreen("run", str(folder), env=env, cwd=tmp_path)
        # Then the receiver got a verified verdict.created per classified image
        assert run.returncode == 0, run.stdout + run.stderr
        got = receiver.received()
        assert len(got) == 4, run.stderr
        assert all(verify(secret, r.headers, r.body) for r in got)
        keys = sorted(json.loads(r.body)["data"]["key"] for r in got)
        assert keys == sorted(k for k in sample_images(4) if k not in CORRUPT_FILES)
    finally:
        receiver.stop()
        engine.dispose()
