"""Prometheus metrics of ``deepscreen worker``: tasks, their latency, images, queue depth.

Tasks run in prefork pool processes, so the counters use prometheus_client's
multiprocess mode: each process writes its values to files in a folder of the
worker's own (``<DATA_DIR>/metrics/worker-<pid>``, emptied at start), and the main
process serves their sum on ``--metrics-port``, together with the depth of the
``ingest`` and ``classify`` queues read from the broker at scrape time.

The counters are fed by Celery's ``task_prerun``/``task_postrun`` signals, which
fire in the process that ran the task, and by ``task_failure`` for the failures the
main process reports (hard time limits); the tasks themselves know nothing of them.
A classify task's images are counted from the counts it returns, so the images a
batch classified before it was retried for a transient error are not counted.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from celery.signals import task_failure, task_postrun, task_prerun
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from deepscreen import taskqueue
from deepscreen.config import Settings
from deepscreen.errors import DeepscreenError

logger = logging.getLogger(__name__)

#: prometheus_client reads its multiprocess folder from this variable.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Under ``settings.data_dir``: one folder per worker main process.
METRICS_DIR = "metrics"
DIR_PREFIX = "worker-"
#: Seconds a scrape waits for the broker before reporting it down.
BROKER_TIMEOUT = 2.0
#: Task latency buckets, in seconds: a batch of images takes seconds, a scan may take minutes.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))


class MetricsUnavailable(DeepscreenError):
    """The metrics port cannot be listened on (taken, or not allowed)."""


@dataclass
class WorkerMetrics:
    """The worker's metric objects and the start times of the tasks running in this process."""

    tasks: Counter
    task_seconds: Histogram
    images: Counter
    started: dict[str, float] = field(default_factory=dict)

    def on_prerun(self, task_id: str | None = None, **_: Any) -> None:
        if task_id is not None:
            self.started[task_id] = time.monotonic()

    def on_postrun(
        self,
        task_id: str | None = None,
        task: Any = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        name = str(getattr(task, "name", None) or "unknown")
        outcome = (state or "unknown").lower()
        self.tasks.labels(task=name, outcome=outcome).inc()
        start = self.started.pop(task_id, None) if task_id is not None else None
        if start is not None:
            self.task_seconds.labels(task=name).observe(time.monotonic() - start)
        classify = (taskqueue.CLASSIFY_BATCH, taskqueue.CLASSIFY_PENDING)
        if name in classify and outcome == "success" and isinstance(retval, dict):
            for key in ("classified", "failed", "skipped"):
                self.images.labels(outcome=key).inc(int(retval.get(key, 0)))

    def on_failure(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        """Count a failure the worker's main process reports (a hard time limit, say):
        the task's own process never got to ``task_postrun``. A failure inside the
        task's process is left to ``task_postrun``, which follows it there."""
        if task_id is not None and task_id in self.started:
            return
        self.tasks.labels(
            task=str(getattr(sender, "name", None) or "unknown"), outcome="failure"
        ).inc()


def create_metrics() -> WorkerMetrics:
    """New metric objects, registered nowhere: in multiprocess mode their values live in
    the folder's files and `serve` collects them from there."""
    return WorkerMetrics(
        tasks=Counter(
            "deepscreen_worker_tasks",
            "Tasks run, by task name and outcome (success, failure, retry).",
            ["task", "outcome"],
            registry=None,
        ),
        task_seconds=Histogram(
            "deepscreen_worker_task_duration_seconds",
            "Wall time of a task run, by task name.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
        images=Counter(
            "deepscreen_worker_images",
            "Images handled by completed classify tasks, by outcome (classified, failed, "
            "skipped as already decided).",
            ["outcome"],
            registry=None,
        ),
    )


def connect_signals(metrics: WorkerMetrics) -> Callable[[], None]:
    """Feed ``metrics`` from Celery's task signals; returns the function that disconnects."""
    task_prerun.connect(metrics.on_prerun, weak=False)
    task_postrun.connect(metrics.on_postrun, weak=False)
    task_failure.connect(metrics.on_failure, weak=False)

    def disconnect() -> None:
        task_prerun.disconnect(metrics.on_prerun)
        task_postrun.disconnect(metrics.on_postrun)
        task_failure.disconnect(metrics.on_failure)

    return disconnect


def metrics_dir(settings: Settings, pid: int | None = None) -> Path:
    """The multiprocess folder of the worker whose main process is ``pid`` (default: this one)."""
    return settings.data_dir / METRICS_DIR / f"{DIR_PREFIX}{pid or os.getpid()}"


def prepare_dir(path: Path) -> None:
    """Empty ``path`` (a previous worker with the same pid left counts there) and remove
    the folders of workers that are gone."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for other in path.parent.glob(f"{DIR_PREFIX}*"):
        pid = other.name.removeprefix(DIR_PREFIX)
        if other != path and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(other, ignore_errors=True)


def enable_multiprocess(path: Path) -> None:
    """Make every metric created from now on, in this process and in the pool processes
    it forks, write its values to files in ``path``.

    prometheus_client picks its value class from the environment when it is first
    imported; it is picked again here in case something imported it earlier.
    """
    from prometheus_client import values

    os.environ[MULTIPROC_ENV] = str(path)
    values.ValueClass = values.get_value_class()


def queue_depths(settings: Settings, client: Any = None) -> dict[str, int]:
    """Messages waiting in each deepscreen queue (not those a worker has taken).

    Redis: the length of the queue's list (``client`` is a `redis.Redis`, made from
    the broker URL when not given). The embedded filesystem broker: its message files.
    Other brokers are not supported (an empty result).
    """
    if taskqueue.is_filesystem_broker(settings):
        options = taskqueue.broker_transport_options(settings)
        folder = Path(options["data_folder_in"])
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return {q: sum(n.partition(".")[2] == f"{q}.msg" for n in names) for q in taskqueue.QUEUES}
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return {}
    own = client is None
    if client is None:
        client = _redis_client(settings.broker_url)
    try:
        return {q: int(client.llen(q)) for q in taskqueue.QUEUES}
    finally:
        if own:
            client.close()


class QueueDepthCollector(Collector):
    """``deepscreen_worker_queue_depth{queue}`` and ``deepscreen_worker_broker_up``,
    read from the broker at every scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "deepscreen_worker_broker_up", "1 if the broker answered this scrape, else 0."
        )
        try:
            depths = queue_depths(self.settings)
        except (RedisError, OSError) as exc:
            logger.warning("metrics: broker unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "deepscreen_worker_queue_depth",
            "Messages waiting in the queue, not yet taken by a worker.",
            labels=["queue"],
        )
        for queue, n in depths.items():
            depth.add_metric([queue], n)
        yield depth


def serve(settings: Settings, path: Path, *, port: int, host: str) -> WSGIServer:
    """Serve the sum of every process's values in ``path`` and the queue depths on
    ``http://host:port/metrics`` from a thread of this process."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    registry.register(QueueDepthCollector(settings))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


@contextmanager
def worker_metrics(settings: Settings, *, port: int, host: str = "0.0.0.0") -> Iterator[None]:
    """Metrics for the worker started inside the block, served on ``port`` (0: none).

    Enter it before the worker starts, so its pool processes fork with multiprocess
    mode on and the signals connected.
    """
    if not port:
        yield
        return
    path = metrics_dir(settings)
    prepare_dir(path)
    try:
        server = serve(settings, path, port=port, host=host)
    except (OSError, OverflowError) as exc:  # taken, not allowed, or not a port
        shutil.rmtree(path, ignore_errors=True)
        raise MetricsUnavailable(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    enable_multiprocess(path)
    disconnect = connect_signals(create_metrics())
    logger.info("serving worker metrics on http://%s:%d/metrics", host, port)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        disconnect()
        shutil.rmtree(path, ignore_errors=True)


def _redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(
        url, socket_timeout=BROKER_TIMEOUT, socket_connect_timeout=BROKER_TIMEOUT
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
