"""Operations end to end: a prefork `deepscreen worker` serving Prometheus metrics on
Redis, PostgreSQL and SeaweedFS; the Redis queue depth; and `deepscreen run` pointing
at, and serving, the dashboard on its results."""

from __future__ import annotations

import http.client
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pipeline_helpers import Process, clean_env, deepscreen, ingest_bucket, wait_decided, wait_for
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sample_images import generated_images
from services import free_port
from sqlalchemy import Engine

from deepscreen import taskqueue
from deepscreen.config import Settings
from worker.metrics import QueueDepthCollector, metrics_dir

#: Seconds a worker gets to start, load the model and classify the run.
DEADLINE = 300


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``http://127.0.0.1:PORT/metrics``, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def serving(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def test_a_worker_serves_task_image_and_queue_metrics(
    stack_env: dict[str, str],
    stack_settings: Settings,
    stack_engine: Engine,
    fill_bucket: Callable[[int], str],
    start_process: Callable[..., Process],
    tmp_path: Path,
) -> None:
    # Given 5 images and 3 corrupt files in a bucket, in batches of 4, and a prefork
    # worker with its metrics on a free port
    bucket = fill_bucket(5)
    env = {**stack_env, "DEEPSCREEN_CLASSIFY_BATCH_SIZE": "4"}
    port = free_port()
    worker = start_process(
        [
            "worker",
            "--concurrency",
            "1",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
        ],
        env,
    )
    wait_for(
        lambda: serving(port) or worker.proc.poll() is not None,
        timeout=60,
        what="the worker's metrics endpoint",
    )
    assert worker.proc.poll() is None, worker.output()
    folder = metrics_dir(stack_settings, pid=worker.proc.pid)
    assert folder.is_dir()
    # When the bucket is ingested and classified
    ingested = ingest_bucket(bucket, env, tmp_path)
    assert "8 new, 0 already known, 1 skipped by suffix; 2 classify tasks queued" in ingested
    wait_decided(
        stack_engine, bucket, worker, timeout=DEADLINE, what="every image to be done or failed"
    )
    classify = (("outcome", "success"), ("task", taskqueue.CLASSIFY_BATCH))
    tasks = ("deepscreen_worker_tasks_total", classify)
    # (a task's counts are written just after its verdicts are committed)
    wait_for(lambda: scrape(port).get(tasks) == 2, timeout=30, what="2 classify tasks counted")
    # Then the metrics, counted in the pool process and served by the main one, say so
    samples = scrape(port)
    assert samples[("deepscreen_worker_images_total", (("outcome", "classified"),))] == 5
    assert samples[("deepscreen_worker_images_total", (("outcome", "failed"),))] == 3
    duration = ("deepscreen_worker_task_duration_seconds_count", classify[1:])
    assert samples[duration] == 2
    assert samples[("deepscreen_worker_broker_up", ())] == 1
    for queue in taskqueue.QUEUES:
        assert samples[("deepscreen_worker_queue_depth", (("queue", queue),))] == 0
    assert "ForkPoolWorker" in worker.output()
    # When the worker stops, its metrics folder goes with it
    assert worker.stop() == 0, worker.output()
    assert not folder.exists()


def test_the_queue_depth_is_read_from_redis(stack_settings: Settings) -> None:
    # Given 3 classify batches and 1 scan waiting in Redis, with no worker running
    app = taskqueue.create_celery(stack_settings)
    try:
        assert taskqueue.enqueue_classify(app, [1, 2, 3, 4, 5], batch_size=2) == 3
        taskqueue.send(app, taskqueue.INGEST, args=["s3://nowhere/"])
    finally:
        app.close()
    # When the worker's collector reads the broker
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(stack_settings))
    # Then each queue's depth is what waits in it
    depth = "deepscreen_worker_queue_depth"
    assert registry.get_sample_value(depth, {"queue": "classify"}) == 3
    assert registry.get_sample_value(depth, {"queue": "ingest"}) == 1
    assert registry.get_sample_value("deepscreen_worker_broker_up") == 1


def test_run_points_at_the_dashboard_and_serves_it_on_its_results(
    tmp_path: Path, start_process: Callable[..., Process]
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in generated_images(2).items():
        (folder / name).write_bytes(data)
    env = clean_env(data_dir=tmp_path / "data", inference_threads=1)
    # When a folder is run plainly
    plain = deepscreen("run", str(folder), env=env, cwd=tmp_path)
    # Then the summary says how to review the results in the dashboard
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "review them: deepscreen dashboard, then open http://127.0.0.1:8000/" in plain.stdout
    assert "make an account: deepscreen create-user NAME --role admin" in plain.stdout

    # When it is run with --serve PORT
    port = free_port()
    run = start_process(["run", str(folder), "--serve", str(port)], env)
    wait_for(
        lambda: _status(port, "/healthz") == 200 or run.proc.poll() is not None,
        timeout=DEADLINE,
        what="the dashboard served by deepscreen run",
    )
    # Then, after the summary, the dashboard answers on the same results
    assert run.proc.poll() is None, run.output()
    assert f"review them: http://127.0.0.1:{port}/" in run.output()
    assert "0 new, 2 already known" in run.output()
    assert _status(port, "/") == 302  # to the login page
    # And Ctrl-C stops the run and the dashboard with it
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(60) == 0, run.output()
    assert _status(port, "/healthz") is None


def _status(port: int, path: str) -> int | None:
    """The status of ``GET path`` (redirects not followed), or None if nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()
