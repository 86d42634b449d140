"""Retrying through a database outage (issue 14, item 8): for a bounded time, not a
bounded count, through a real worker on the embedded broker.

The 30-second PostgreSQL outage itself: tests/pipeline/test_pipeline_recovery.py.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from pathlib import Path

from celery import Celery, Task
from celery.signals import task_failure, task_success

from deepscreen import taskqueue
from deepscreen.config import TASK_RETRY_MAX_DELAY, Settings
from deepscreen.errors import DatabaseUnavailable
from worker.embedded import embedded_worker
from worker.outage import outage_delay
from worker.runtime import Runtime
from worker.tasks import create_worker_app, retry_policy

FLAKY = "tests.flaky_database"


def flaky_app(settings: Settings, failures: int, calls: list[tuple[float, int]]) -> Celery:
    """The worker app plus a task that finds the database down ``failures`` times."""
    app = create_worker_app(settings, Runtime(settings))
    app.conf.task_routes = {**app.conf.task_routes, FLAKY: {"queue": taskqueue.INGEST_QUEUE}}

    @app.task(name=FLAKY, bind=True, **retry_policy(settings))
    def flaky(self: Task) -> str:
        calls.append((time.monotonic(), self.request.retries))
        if len(calls) <= failures:
            raise DatabaseUnavailable("database unavailable: connection refused")
        return "done"

    return app


def run_until(app: Celery, settings: Settings, done: threading.Event, timeout: float) -> None:
    with embedded_worker(app):
        app.send_task(FLAKY, queue=taskqueue.INGEST_QUEUE)
        done.wait(timeout)


def test_an_outage_is_retried_beyond_the_retry_count_within_the_window(tmp_path: Path) -> None:
    # Given a task allowed 1 retry of a transient error, and 10 minutes for an outage
    settings = Settings(data_dir=tmp_path / "data", task_max_retries=1)
    calls: list[tuple[float, int]] = []
    app = flaky_app(settings, failures=3, calls=calls)
    finished = threading.Event()

    def on_success(sender: object = None, **_: object) -> None:
        finished.set()

    task_success.connect(on_success, sender=app.tasks[FLAKY], weak=False)
    try:
        # When the database is down for its first 3 tries
        run_until(app, settings, finished, timeout=60)
    finally:
        task_success.disconnect(on_success, sender=app.tasks[FLAKY])
    # Then it was tried again, with growing waits, until it succeeded on the 4th try,
    # and the outage used up none of its retries
    assert finished.is_set(), calls
    assert len(calls) == 4
    assert [retries for _, retries in calls] == [0, 0, 0, 0]
    waits = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
    assert waits[-1] > waits[0]


def test_an_outage_longer_than_the_window_fails_the_task(tmp_path: Path) -> None:
    # Given a window of 3 seconds and a database that stays down
    settings = Settings(data_dir=tmp_path / "data", database_retry_window=3)
    calls: list[tuple[float, int]] = []
    app = flaky_app(settings, failures=1000, calls=calls)
    failed = threading.Event()

    def on_failure(
        sender: object = None, exception: BaseException | None = None, **_: object
    ) -> None:
        if isinstance(exception, DatabaseUnavailable):
            failed.set()

    task_failure.connect(on_failure, sender=app.tasks[FLAKY], weak=False)
    try:
        run_until(app, settings, failed, timeout=60)
    finally:
        task_failure.disconnect(on_failure, sender=app.tasks[FLAKY])
    # Then it is retried for about 3 seconds, then fails with the database error
    assert failed.is_set(), calls
    assert len(calls) >= 2
    assert calls[-1][0] - calls[0][0] >= 2.9


def test_the_waits_back_off_up_to_the_longest_retry_wait() -> None:
    rng = random.Random(14)
    for retries, ceiling in [(0, 2), (1, 4), (4, 32), (5, TASK_RETRY_MAX_DELAY), (40, 60)]:
        for _ in range(20):
            assert ceiling / 2 <= outage_delay(retries, rng) <= min(ceiling, TASK_RETRY_MAX_DELAY)
