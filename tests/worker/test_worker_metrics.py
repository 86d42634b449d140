"""Worker metrics in one process: what the task signals count, queue depths, the
multiprocess folder and the ``--metrics-port`` option. (A real prefork worker serving
them: tests/pipeline/test_pipeline_metrics.py.)"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from billiard.exceptions import TimeLimitExceeded
from celery import Celery
from celery.signals import task_failure
from prometheus_client import CollectorRegistry
from services import free_port

from deepscreen import taskqueue
from deepscreen.cli import build_parser
from deepscreen.config import Settings
from deepscreen.errors import PermanentError, TransientError
from worker.metrics import (
    MULTIPROC_ENV,
    MetricsUnavailable,
    QueueDepthCollector,
    WorkerMetrics,
    connect_signals,
    create_metrics,
    metrics_dir,
    prepare_dir,
    queue_depths,
    worker_metrics,
)


@pytest.fixture
def counted() -> Iterator[tuple[WorkerMetrics, CollectorRegistry]]:
    """Fresh metrics fed by the task signals, readable through a registry of their own."""
    metrics = create_metrics()
    registry = CollectorRegistry()
    for metric in (metrics.tasks, metrics.task_seconds, metrics.images):
        registry.register(metric)
    disconnect = connect_signals(metrics)
    yield metrics, registry
    disconnect()


@pytest.fixture
def app(tmp_path: Path) -> Celery:
    """A Celery app with stand-ins named like the real tasks (run with ``apply``, which
    goes through the same tracer, and so the same signals, as a worker). Not shared:
    a shared task would be copied into every app made later, the worker's too."""
    app = taskqueue.create_celery(Settings(data_dir=tmp_path / "data"))

    @app.task(name=taskqueue.CLASSIFY_BATCH, shared=False)
    def classify(counts: dict[str, int]) -> dict[str, int]:
        return counts

    @app.task(
        name=taskqueue.INGEST,
        bind=True,
        shared=False,
        autoretry_for=(TransientError,),
        max_retries=1,
        retry_backoff=False,
    )
    def ingest(self: object, error: str) -> None:
        raise (TransientError if error == "transient" else PermanentError)(error)

    return app


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_task_signals_count_tasks_by_outcome_and_the_images_a_batch_handled(
    counted: tuple[WorkerMetrics, CollectorRegistry], app: Celery
) -> None:
    metrics, registry = counted
    classify, ingest = app.tasks[taskqueue.CLASSIFY_BATCH], app.tasks[taskqueue.INGEST]
    # Given two classify batches that succeed
    classify.apply(args=[{"classified": 3, "failed": 1, "skipped": 0, "retry": 0}])
    classify.apply(args=[{"classified": 2, "failed": 0, "skipped": 4, "retry": 0}])
    # And a task that fails for good, and one retried once before failing
    ingest.apply(args=["permanent"])
    ingest.apply(args=["transient"])
    # Then tasks are counted by name and outcome, and timed
    tasks = "deepscreen_worker_tasks_total"
    assert value(registry, tasks, task=taskqueue.CLASSIFY_BATCH, outcome="success") == 2
    assert value(registry, tasks, task=taskqueue.INGEST, outcome="failure") == 2
    assert value(registry, tasks, task=taskqueue.INGEST, outcome="retry") == 1
    seconds = "deepscreen_worker_task_duration_seconds_count"
    assert value(registry, seconds, task=taskqueue.CLASSIFY_BATCH) == 2
    assert value(registry, seconds, task=taskqueue.INGEST) == 3
    assert metrics.started == {}  # nothing left behind per task
    # When the main process reports a task it had to kill (hard time limit), which
    # never reached task_postrun in its own process
    task_failure.send(sender=classify, task_id="killed", exception=TimeLimitExceeded(360))
    # Then that is a failure too
    assert value(registry, tasks, task=taskqueue.CLASSIFY_BATCH, outcome="failure") == 1
    # And the batches' images by outcome
    images = "deepscreen_worker_images_total"
    assert value(registry, images, outcome="classified") == 5
    assert value(registry, images, outcome="failed") == 1
    assert value(registry, images, outcome="skipped") == 4


def test_the_embedded_queue_depth_is_its_message_files(tmp_path: Path) -> None:
    # Given two classify tasks and one ingest task sent to the filesystem broker
    settings = Settings(data_dir=tmp_path / "data")
    app = taskqueue.create_celery(settings)
    taskqueue.enqueue_classify(app, [1, 2, 3], batch_size=2)
    taskqueue.send(app, taskqueue.INGEST, args=["file:///nowhere"])
    # Then the depths are counted per queue
    assert queue_depths(settings) == {"ingest": 1, "classify": 2, "webhooks": 0}
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(settings))
    assert value(registry, "deepscreen_worker_queue_depth", queue="classify") == 2
    assert value(registry, "deepscreen_worker_broker_up") == 1


def test_an_unreachable_broker_is_reported_down_not_raised(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(settings))
    assert value(registry, "deepscreen_worker_broker_up") == 0
    assert value(registry, "deepscreen_worker_queue_depth", queue="classify") is None


def test_the_metrics_folder_starts_empty_and_folders_of_dead_workers_go(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    path = metrics_dir(settings)
    assert path == tmp_path / "metrics" / f"worker-{os.getpid()}"
    # Given counts left by an earlier worker with this pid, a dead worker's folder
    # and a live one's
    path.mkdir(parents=True)
    (path / "counter_1.db").write_bytes(b"old")
    dead = metrics_dir(settings, pid=2**22 + 1)  # above Linux's highest pid
    live = metrics_dir(settings, pid=os.getppid())
    for folder in (dead, live):
        folder.mkdir()
    # When the folder is prepared
    prepare_dir(path)
    # Then it is empty, the dead worker's folder is gone and the live one's stays
    assert path.is_dir() and list(path.iterdir()) == []
    assert not dead.exists() and live.exists()


def test_metrics_are_off_by_default_and_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.worker_metrics_port == 0
    args = build_parser().parse_args(["worker"])
    assert args.metrics_port is None  # the setting decides
    assert build_parser().parse_args(["worker", "--metrics-port", "9464"]).metrics_port == 9464
    # Port 0: nothing is set up
    with worker_metrics(settings, port=0):
        assert MULTIPROC_ENV not in os.environ
        assert not (tmp_path / "metrics").exists()
    # A port another socket holds: refused before anything changes in this process
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(MetricsUnavailable, match=f"cannot serve metrics on 127.0.0.1:{port}"),
            worker_metrics(settings, port=port, host="127.0.0.1"),
        ):
            pass
    assert MULTIPROC_ENV not in os.environ
    assert list((tmp_path / "metrics").iterdir()) == []
