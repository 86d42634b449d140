"""The Celery application: queues, task names, delivery guarantees and the beat schedule.

`create_celery(settings)` builds a bare app (nothing happens at import). Workers add
the task implementations (`worker.tasks`); everyone else — the ``deepscreen ingest``
command, the dashboard — only sends tasks *by name*, so they never import LiteRT.

Delivery is at-least-once: messages are acknowledged after the task returns
(``acks_late``), given back if the worker process dies, and prefetched one at a
time. Tasks take image ids and are idempotent, so a redelivery is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from deepscreen.config import Settings
from deepscreen.errors import TransientError

logger = logging.getLogger(__name__)

#: Queue of scans and the reconciler: cheap, IO-bound work.
INGEST_QUEUE = "ingest"
#: Queue of classify batches: the CPU-bound inference.
CLASSIFY_QUEUE = "classify"
#: Queue of webhook deliveries: network-bound, kept apart so a slow receiver never
#: delays classification.
WEBHOOKS_QUEUE = "webhooks"
QUEUES = (INGEST_QUEUE, CLASSIFY_QUEUE, WEBHOOKS_QUEUE)
#: Queue of retraining runs, served only by ``deepscreen training-worker`` (the one
#: worker with TensorFlow); classify workers never consume it.
TRAINING_QUEUE = "training"

#: ``classify_batch(image_ids: list[int])``.
CLASSIFY_BATCH = "deepscreen.classify_batch"
#: ``classify_pending(image_ids: list[int])``: a wake-up; the worker classifies whatever
#: is queued, up to a batch (the ids, of the images that sent it, are for the logs).
CLASSIFY_PENDING = "deepscreen.classify_pending"
#: ``ingest(url: str)``: list a store URL, register new objects, enqueue them.
INGEST = "deepscreen.ingest"
#: ``reconcile()``: re-enqueue images stuck in queued or processing.
RECONCILE = "deepscreen.reconcile"

#: ``deliver_webhook(delivery_id: int)``: one attempt of one delivery.
DELIVER_WEBHOOK = "deepscreen.deliver_webhook"
#: ``dispatch_webhooks()``: enqueue every pending delivery that is due.
DISPATCH_WEBHOOKS = "deepscreen.dispatch_webhooks"

#: ``retrain(trigger: str, run_id: int | None)``: one retraining run.
RETRAIN = "deepscreen.retrain"
#: ``check_retrain()``: start a run if enough new corrections exist.
CHECK_RETRAIN = "deepscreen.check_retrain"

TASK_QUEUES = {
    RETRAIN: TRAINING_QUEUE,
    CHECK_RETRAIN: TRAINING_QUEUE,
    CLASSIFY_BATCH: CLASSIFY_QUEUE,
    CLASSIFY_PENDING: CLASSIFY_QUEUE,
    INGEST: INGEST_QUEUE,
    RECONCILE: INGEST_QUEUE,
    DELIVER_WEBHOOK: WEBHOOKS_QUEUE,
    DISPATCH_WEBHOOKS: WEBHOOKS_QUEUE,
}

#: Redis key set while a ``classify_pending`` wake-up waits in the queue untaken.
WAKE_UP_KEY = "deepscreen:classify-pending:waiting"
#: Seconds before that key expires, should its wake-up be lost.
WAKE_UP_TTL = 10
#: Seconds to wait for a broker connection from the pool.
WAKE_UP_TIMEOUT = 5.0

#: How often the embedded (filesystem) consumer looks for new messages.
FILESYSTEM_POLL_SECONDS = 0.2

#: File beat keeps its last-run times in, under ``settings.data_dir``.
BEAT_SCHEDULE_FILE = "celerybeat-schedule"


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``, with no tasks registered.

    For the embedded ``filesystem://`` broker the queue folders under
    ``settings.queue_dir`` are created.
    """
    app = Celery("deepscreen", set_as_current=False)
    app.conf.update(
        broker_url=broker_url(settings),
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # JSON only: no pickle, so a message can never run code.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        # Verdicts live in the database; nobody waits on task results.
        task_ignore_result=True,
        result_backend=None,
        # At-least-once delivery of idempotent tasks.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A task running when the broker connection drops finishes: its verdicts are
        # committed to the database, so a redelivery of its message is a cheap skip,
        # while cancelling it would leave its images for the reconciler.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (*QUEUES, TRAINING_QUEUE)
        ],
        task_default_queue=CLASSIFY_QUEUE,
        task_create_missing_queues=False,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        beat_schedule=beat_schedule(settings),
        beat_schedule_filename=str(settings.data_dir / BEAT_SCHEDULE_FILE),
        enable_utc=True,
        timezone="UTC",
    )
    if is_filesystem_broker(settings):
        # One process is producer and consumer; there is nobody to broadcast to.
        app.conf.worker_enable_remote_control = False
        app.conf.worker_send_task_events = False
        for folder in _filesystem_folders(settings):
            folder.mkdir(parents=True, exist_ok=True)
    return app


def is_filesystem_broker(settings: Settings) -> bool:
    return settings.broker_url.startswith("filesystem:")


def broker_url(settings: Settings) -> str:
    """The settings' broker URL; the bare ``filesystem://`` gets a host so kombu does not
    warn about a missing one (the filesystem transport ignores it)."""
    if settings.broker_url.rstrip("/") == "filesystem:":
        return "filesystem://localhost/"
    return settings.broker_url


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """The settings' transport options, completed for the filesystem transport.

    kombu keeps that transport's exchange table in ``control_folder``, which
    defaults to a folder relative to the working directory; it belongs in the
    queue folder with the messages. An empty folder is polled a little more often
    than kombu's default, since small local runs are latency-bound.
    """
    options = dict(settings.broker_transport_options)
    if is_filesystem_broker(settings):
        options.setdefault("control_folder", str(settings.queue_dir / "control"))
        # Seconds between looks at an empty queue folder (kombu's default is 1).
        options.setdefault("polling_interval", FILESYSTEM_POLL_SECONDS)
    return options


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The reconciler every ``reconcile_interval`` and one scan per configured URL.

    Each entry expires after one interval: a run that waited that long in the
    queue is superseded by the next one.
    """
    schedule: dict[str, dict[str, Any]] = {
        "reconcile": {
            "task": RECONCILE,
            "schedule": float(settings.reconcile_interval),
            "options": {"expires": float(settings.reconcile_interval)},
        },
        "dispatch webhooks": {
            "task": DISPATCH_WEBHOOKS,
            "schedule": float(settings.webhook_dispatch_interval),
            "options": {"expires": float(settings.webhook_dispatch_interval)},
        },
    }
    if settings.retrain_data and settings.retrain_interval:
        schedule["retrain"] = {
            "task": RETRAIN,
            "schedule": float(settings.retrain_interval),
            "args": ["schedule", None],
            "options": {"expires": float(settings.retrain_interval)},
        }
    if settings.retrain_data and settings.retrain_min_corrections:
        schedule["check retrain"] = {
            "task": CHECK_RETRAIN,
            "schedule": float(settings.reconcile_interval),
            "options": {"expires": float(settings.reconcile_interval)},
        }
    for url in settings.scan_urls:
        schedule[f"scan {url}"] = {
            "task": INGEST,
            "schedule": float(settings.scan_interval),
            "args": [url],
            "options": {"expires": float(settings.scan_interval)},
        }
    return schedule


def enqueue_classify(app: Celery, image_ids: Sequence[int], *, batch_size: int) -> int:
    """Send one classify task per ``batch_size`` ids; returns how many were sent.

    Full batches name their ids (``classify_batch``). What is left, fewer than a
    batch (one image from an event or a submission, a small scan), is a wake-up
    (``classify_pending``, see `wake_up`): the worker that takes it classifies
    whatever is queued by then, so images arriving one by one are classified together
    under load and at once at idle (`worker.microbatch`).

    Call only after the transaction that registered the images has committed, so
    a worker always finds the rows. A broker that cannot be reached raises
    `TransientError`; the images stay queued in the database and the reconciler
    enqueues them later.
    """
    ids = [int(i) for i in image_ids]
    sent = 0
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        if len(chunk) == batch_size:
            send(app, CLASSIFY_BATCH, args=[chunk])
            sent += 1
        else:
            sent += wake_up(app, chunk)
    return sent


def wake_up(app: Celery, image_ids: Sequence[int] = ()) -> int:
    """Send a ``classify_pending`` wake-up unless one already waits untaken; 1 if sent.

    On Redis a key (`WAKE_UP_KEY`, set with NX) marks a wake-up sent and not yet taken;
    the worker deletes it as it takes the message, before it claims (`wake_up_taken`).
    While it is set, the images just committed will be in that worker's claim, so a
    burst sends one message, not one per image. The key expires after `WAKE_UP_TTL`
    seconds, so a wake-up lost with a crashed sender delays the next ones that long at
    most. Other brokers send every time (a spare wake-up finds nothing and returns).
    """
    if not _redis(app, lambda client: client.set(WAKE_UP_KEY, 1, nx=True, ex=WAKE_UP_TTL)):
        return 0
    try:
        send(app, CLASSIFY_PENDING, args=[[int(i) for i in image_ids]])
    except TransientError:
        _redis(app, lambda client: client.delete(WAKE_UP_KEY))
        raise
    return 1


def wake_up_taken(app: Celery) -> None:
    """The worker has taken a wake-up and is about to claim: the next registration
    sends a new one (see `wake_up`)."""
    _redis(app, lambda client: client.delete(WAKE_UP_KEY))


def _redis(app: Celery, call: Callable[[Any], Any]) -> Any:
    """``call(client)`` on the broker's Redis client (kombu's channel client), or True
    with another broker. Raises `TransientError` if Redis cannot be reached."""
    if not str(app.conf.broker_url).startswith(("redis://", "rediss://")):
        return True
    try:
        with app.pool.acquire(block=True, timeout=WAKE_UP_TIMEOUT) as connection:
            return call(connection.default_channel.client)
    except (OperationalError, RedisError, OSError) as exc:
        raise TransientError(f"broker unavailable: {exc}") from exc


def enqueue_deliveries(
    app: Celery, delivery_ids: Sequence[int], *, expires: float | None = None
) -> int:
    """Send one delivery task per id (after the commit that created them).

    ``expires`` (seconds) drops a message that waited longer in the queue; the
    dispatcher sets it, since it sends a due delivery again on its next run anyway.
    """
    for delivery_id in delivery_ids:
        send(app, DELIVER_WEBHOOK, args=[int(delivery_id)], expires=expires)
    return len(delivery_ids)


def send(app: Celery, name: str, *, args: list[Any], expires: float | None = None) -> str:
    """Send task ``name`` to its queue; returns the task id."""
    try:
        result = app.send_task(name, args=args, queue=TASK_QUEUES[name], expires=expires)
    except OperationalError as exc:
        raise TransientError(f"broker unavailable: {exc}") from exc
    logger.debug("sent %s %s", name, result.id)
    return str(result.id)


def _filesystem_folders(settings: Settings) -> list[Path]:
    options = broker_transport_options(settings)
    keys = ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")
    return [Path(options[key]) for key in keys if options.get(key)]
