"""Embedded mode, ``deepscreen run FOLDER``: the whole pipeline in one process.

SQLite (by default under ``DEEPSCREEN_DATA_DIR``), migrated on start; the folder
as a `LocalStore`; kombu's filesystem transport as the broker; and a Celery
worker with the solo pool in a thread, running the very same tasks as a
production worker. Ingestion registers and enqueues as it lists, the worker
classifies as messages arrive, and the run ends when every image of the folder
is done or failed. Images left queued or processing by an interrupted run are
enqueued again, so running again resumes and never classifies an image twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from celery import Celery
from celery.signals import task_failure

from deepscreen import taskqueue
from deepscreen.commands.ingest import IngestSummary, ingest
from deepscreen.config import Settings
from deepscreen.db import migrate, queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import ImageStatus
from deepscreen.db.session import session_scope
from deepscreen.errors import DeepscreenError, ModelError
from deepscreen.storage import LocalStore, ObjectInfo
from worker.report import print_report
from worker.runtime import Runtime
from worker.tasks import create_worker_app
from worker.webhooks import unattempted

logger = logging.getLogger(__name__)

#: Seconds between looks at the database while the worker classifies.
POLL_SECONDS = 0.25
#: Seconds to wait for the worker thread to start, and to finish its task on stop.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
#: Seconds the run waits, once every image is decided, for the first attempt of the
#: webhook deliveries it caused; the rest stay queued for the next run.
DELIVERY_WAIT = 30.0

OK, FAILED, USAGE_ERROR, INTERRUPTED = 0, 1, 2, 130

#: Where ``deepscreen dashboard`` listens unless told otherwise.
DASHBOARD_PORT = 8000


@dataclass
class _Abort:
    """Set from the worker thread when a task fails for good."""

    event: threading.Event
    reason: str = ""


def embedded_settings(settings: Settings) -> Settings:
    """``settings`` with the embedded broker: the in-process worker must never consume
    a production queue, whatever ``DEEPSCREEN_BROKER_URL`` says."""
    if taskqueue.is_filesystem_broker(settings):
        return settings
    logger.info("deepscreen run uses its own filesystem queue, not %s", settings.broker_url)
    return dataclasses.replace(settings, broker_url="filesystem://")


def run_folder(
    folder: Path,
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    progress: bool | None = None,
    max_rows: int = 50,
    serve_port: int | None = None,
) -> int:
    """Classify every image in ``folder``; print a summary; return the exit status.

    ``serve_port``: the dashboard will be served on it after the run (the summary says so).
    """
    folder = folder.expanduser().resolve()
    if folder.is_file():
        print(
            f"deepscreen run: error: {folder} is a file, not a folder "
            "(for single files: deepscreen classify FILE)",
            file=sys.stderr,
        )
        return USAGE_ERROR
    if not folder.is_dir():
        print(f"deepscreen run: error: no such folder: {folder}", file=sys.stderr)
        return USAGE_ERROR
    settings = embedded_settings(settings)
    runtime = Runtime(settings)
    try:
        runtime.classifier  # noqa: B018 - load and validate the model before anything else
    except ModelError as exc:
        print(f"deepscreen run: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    migrate.upgrade(settings)
    app = create_worker_app(settings, runtime)
    store = LocalStore(folder)
    listed: set[tuple[str, str]] = set()
    started = utcnow()
    try:
        with embedded_worker(app) as abort:
            summary = _ingest(store, runtime, app, listed, progress)
            finished = _wait(runtime, store.bucket, abort, progress)
            if finished:
                _wait_deliveries(runtime, started)
        with session_scope(runtime.session_factory) as session:
            rows = [
                (image, prediction)
                for image, prediction in queries.images_with_predictions(
                    session=session,
                    bucket=store.bucket,
                    model_version_id=runtime.model_version_id,
                )
                if (image.key, image.etag) in listed
            ]
    except KeyboardInterrupt:
        print("deepscreen run: interrupted; run it again to resume", file=sys.stderr)
        return INTERRUPTED
    except DeepscreenError as exc:
        print(f"deepscreen run: error: {exc}; run it again to resume", file=sys.stderr)
        return FAILED
    finally:
        app.close()
        runtime.close()
    print_report(
        rows, summary, settings, labels=runtime.classifier.labels, out=out, max_rows=max_rows
    )
    out.write(dashboard_hint(serve_port))
    if not finished:
        print(f"deepscreen run: stopped: {abort.reason}; run it again to resume", file=sys.stderr)
        return FAILED
    return OK


def dashboard_hint(serve_port: int | None = None) -> str:
    """Where to review the results: the dashboard on the same database."""
    account = "first time, make an account: deepscreen create-user NAME --role admin\n"
    if serve_port is not None:
        return (
            f"review them: http://127.0.0.1:{serve_port}/ (the dashboard, until Ctrl-C)\n" + account
        )
    return (
        f"review them: deepscreen dashboard, then open http://127.0.0.1:{DASHBOARD_PORT}/ "
        "(with the same DEEPSCREEN_* settings)\n" + account
    )


def serve_dashboard(port: int, *, host: str = "127.0.0.1") -> int:
    """Run ``deepscreen dashboard`` on the embedded results until it stops or Ctrl-C;
    returns its exit status (0 after Ctrl-C).

    A subprocess, not an import: the worker and the dashboard are separate apps. It
    inherits this environment, except that it too uses the embedded queue.
    """
    env = {**os.environ, "DEEPSCREEN_BROKER_URL": "filesystem://"}
    # -P: the current folder is not put on sys.path, so a folder named deepscreen or
    # dashboard there (the clone, run from its parent) cannot shadow the packages.
    command = [sys.executable, "-P", "-m", "deepscreen.cli", "dashboard"]
    proc = subprocess.Popen([*command, "--host", host, "--port", str(port)], env=env)

    def stop(signum: int, _frame: Any) -> None:
        proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the dashboard too; a SIGINT sent to this process
        # alone does not, so pass it on.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return OK
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ingest(
    store: LocalStore,
    runtime: Runtime,
    app: Celery,
    listed: set[tuple[str, str]],
    progress: bool | None,
) -> IngestSummary:
    from tqdm import tqdm

    settings = runtime.settings

    def enqueue(ids: Any) -> int:
        return taskqueue.enqueue_classify(app, ids, batch_size=settings.classify_batch_size)

    def seen(obj: ObjectInfo) -> None:
        listed.add((obj.key, obj.etag))
        bar.update()

    started = utcnow()
    with tqdm(
        desc="listing", unit="file", file=sys.stderr, disable=_off(progress), leave=False
    ) as bar:
        summary = ingest(
            store,
            settings=settings,
            session_factory=runtime.session_factory,
            enqueue=enqueue,
            on_object=seen,
        )
    # Left queued or processing by an interrupted run: their messages may be gone.
    with session_scope(runtime.session_factory) as session:
        leftover = queries.unfinished_image_ids(
            session=session, bucket=store.bucket, queued_before=started
        )
    if leftover:
        logger.info("re-enqueueing %d images left unfinished by an earlier run", len(leftover))
        summary.tasks += enqueue(leftover)
    return summary


def _wait(runtime: Runtime, bucket: str, abort: _Abort, progress: bool | None) -> bool:
    """Poll the database until no image of ``bucket`` is queued or processing.

    False if a task failed for good first (the reason is in ``abort``).
    """
    from tqdm import tqdm

    with tqdm(
        desc="classifying", unit="img", file=sys.stderr, disable=_off(progress), leave=False
    ) as bar:
        while True:
            with session_scope(runtime.session_factory) as session:
                counts = queries.count_images_by_status(session=session, buckets=[bucket])
            pending = counts[ImageStatus.QUEUED] + counts[ImageStatus.PROCESSING]
            decided = counts[ImageStatus.DONE] + counts[ImageStatus.FAILED]
            bar.total = pending + decided
            bar.n = decided
            bar.refresh()
            if pending == 0:
                return True
            if abort.event.wait(POLL_SECONDS):
                return False


def _wait_deliveries(runtime: Runtime, since: datetime) -> None:
    """Let the embedded worker make the first attempt of this run's webhook deliveries
    (retries belong to a production worker and beat), for `DELIVERY_WAIT` at most."""
    deadline = time.monotonic() + DELIVERY_WAIT
    while left := unattempted(session_factory=runtime.session_factory, since=since):
        if time.monotonic() > deadline:
            logger.warning("%d webhook deliveries stay queued for the next run", left)
            return
        time.sleep(POLL_SECONDS)


@contextmanager
def embedded_worker(app: Celery) -> Iterator[_Abort]:
    """A Celery worker (solo pool, both queues) running ``app``'s tasks in a thread.

    Yields the abort flag that a task failing for good sets. On exit the worker
    finishes the task in hand and stops (a warm shutdown).
    """
    from celery.worker import state

    abort = _Abort(threading.Event())
    ready = threading.Event()

    def on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
        abort.reason = f"{getattr(sender, 'name', 'a task')} failed: {exception!r}"
        abort.event.set()

    classify_tasks = [app.tasks[taskqueue.CLASSIFY_BATCH], app.tasks[taskqueue.CLASSIFY_PENDING]]
    for classify_task in classify_tasks:
        task_failure.connect(on_failure, sender=classify_task, weak=False)
    worker = app.WorkController(
        pool="solo",
        concurrency=1,
        queues=list(taskqueue.QUEUES),
        hostname=f"deepscreen-run-{os.getpid()}@{socket.gethostname()}",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        ready_callback=lambda _consumer: ready.set(),
    )

    def run() -> None:
        # A task's retry is sent through the current app, which Celery keeps per
        # thread; the timer thread that runs a retried task when it is due has none
        # and falls back to the default app. Unset, both sent retries to Celery's
        # built-in amqp://localhost, where they were lost.
        app.set_current()
        app.set_default()
        worker.start()

    thread = threading.Thread(target=run, name="deepscreen-worker", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready.wait(0.1):
            if not thread.is_alive() or time.monotonic() > deadline:
                raise DeepscreenError("the embedded worker did not start")
        yield abort
    finally:
        # Celery's own embedded workers stop this way: the consumer loop checks the
        # flag between messages and shuts down warm.
        state.should_stop = 0
        thread.join(STOP_TIMEOUT)
        state.should_stop = None
        for classify_task in classify_tasks:
            task_failure.disconnect(on_failure, sender=classify_task)
        if thread.is_alive():
            logger.error("the embedded worker did not stop within %.0f s", STOP_TIMEOUT)


def _off(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None means on a terminal only."""
    return None if progress is None else not progress
