"""The Celery app and the task adapters: configuration only, no broker needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepscreen import taskqueue
from deepscreen.cli import build_parser, main
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.errors import DatabaseUnavailable, TransientError
from worker.cli import worker_argv
from worker.outage import OutageRetryTask
from worker.tasks import create_worker_app

ROOT = Path(__file__).resolve().parents[2]


def redis_settings(tmp_path: Path, **overrides: object) -> Settings:
    # Nothing listens there: building an app must not connect.
    return Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/3", **overrides)  # type: ignore[arg-type]


def test_the_app_delivers_at_least_once_with_json_only(tmp_path: Path) -> None:
    settings = redis_settings(
        tmp_path, task_soft_time_limit=50, task_time_limit=60, broker_visibility_timeout=150
    )
    conf = taskqueue.create_celery(settings).conf
    assert conf.broker_url == "redis://127.0.0.1:1/3"
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (50, 60)
    # Redis redelivers an unacknowledged task only after the longest task could have ended.
    assert conf.broker_transport_options["visibility_timeout"] == 150 > conf.task_time_limit
    assert conf.task_ignore_result


def test_tasks_are_routed_to_the_ingest_classify_and_webhooks_queues(tmp_path: Path) -> None:
    app = taskqueue.create_celery(redis_settings(tmp_path))
    assert {"classify", "ingest", "webhooks"} <= set(app.amqp.queues)
    route = app.amqp.router.route
    assert route({}, taskqueue.CLASSIFY_BATCH)["queue"].name == taskqueue.CLASSIFY_QUEUE
    assert route({}, taskqueue.INGEST)["queue"].name == taskqueue.INGEST_QUEUE
    assert route({}, taskqueue.RECONCILE)["queue"].name == taskqueue.INGEST_QUEUE
    assert route({}, taskqueue.DELIVER_WEBHOOK)["queue"].name == taskqueue.WEBHOOKS_QUEUE
    assert route({}, taskqueue.DISPATCH_WEBHOOKS)["queue"].name == taskqueue.WEBHOOKS_QUEUE


def test_beat_runs_the_reconciler_and_one_scan_per_url(tmp_path: Path) -> None:
    settings = redis_settings(
        tmp_path,
        scan_urls=("s3://a/in/", "file:///srv/b"),
        scan_interval=120,
        reconcile_interval=30,
    )
    app = taskqueue.create_celery(settings)
    schedule = app.conf.beat_schedule
    assert schedule["reconcile"]["task"] == taskqueue.RECONCILE
    assert schedule["reconcile"]["schedule"] == 30
    scans = [e for e in schedule.values() if e["task"] == taskqueue.INGEST]
    assert sorted(e["args"][0] for e in scans) == ["file:///srv/b", "s3://a/in/"]
    assert {e["schedule"] for e in scans} == {120}
    assert app.conf.beat_schedule_filename == str(tmp_path / taskqueue.BEAT_SCHEDULE_FILE)


def test_beat_triggers_retraining_on_its_schedule_and_on_new_corrections(
    tmp_path: Path,
) -> None:
    # Given retraining configured with both triggers
    settings = redis_settings(
        tmp_path,
        retrain_data=("tree:/data/base",),
        retrain_interval=86400,
        retrain_min_corrections=25,
        reconcile_interval=30,
    )
    app = taskqueue.create_celery(settings)
    schedule = app.conf.beat_schedule
    # Then beat sends a scheduled run daily and checks the corrections every reconcile
    # interval, both on the training queue only the training worker consumes
    assert schedule["retrain"]["task"] == taskqueue.RETRAIN
    assert schedule["retrain"]["schedule"] == 86400
    assert schedule["retrain"]["args"] == ["schedule", None]
    assert schedule["check retrain"]["task"] == taskqueue.CHECK_RETRAIN
    assert schedule["check retrain"]["schedule"] == 30
    routes = app.conf.task_routes
    for name in (taskqueue.RETRAIN, taskqueue.CHECK_RETRAIN):
        assert routes[name]["queue"] == taskqueue.TRAINING_QUEUE
    # And with a trigger off, or no base data, beat sends nothing of the kind
    for off in (
        {"retrain_data": ("tree:/data/base",), "retrain_interval": 0},
        {"retrain_data": (), "retrain_interval": 86400, "retrain_min_corrections": 25},
    ):
        quiet = taskqueue.create_celery(redis_settings(tmp_path, **off)).conf.beat_schedule
        assert {e["task"] for e in quiet.values()}.isdisjoint(
            {taskqueue.RETRAIN, taskqueue.CHECK_RETRAIN}
        )


def test_the_embedded_queue_lives_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    app = taskqueue.create_celery(settings)
    options = app.conf.broker_transport_options
    for key in ("data_folder_in", "data_folder_out", "control_folder"):
        assert Path(options[key]).is_dir()
        assert Path(options[key]).is_relative_to(settings.queue_dir)
    assert not app.conf.worker_enable_remote_control


def test_worker_tasks_retry_transient_errors_only_with_backoff_and_a_bound(
    tmp_path: Path,
) -> None:
    app = create_worker_app(redis_settings(tmp_path, task_max_retries=7))
    for name in (taskqueue.CLASSIFY_BATCH, taskqueue.INGEST, taskqueue.RECONCILE):
        task = app.tasks[name]
        assert task.autoretry_for == (TransientError,)
        # ... except an unreachable database, retried for a time (test_worker_outage.py)
        assert task.dont_autoretry_for == (DatabaseUnavailable,)
        assert task.max_retries == 7
        assert task.retry_backoff and task.retry_jitter
        assert task.acks_late


def test_a_delivery_is_retried_by_celery_for_database_errors_only(tmp_path: Path) -> None:
    # A failed POST is recorded and retried on the webhook schedule by the dispatcher;
    # Celery itself only retries when the database could not record anything, for
    # DEEPSCREEN_DATABASE_RETRY_WINDOW (worker.outage).
    app = create_worker_app(redis_settings(tmp_path, task_max_retries=7))
    deliver = app.tasks[taskqueue.DELIVER_WEBHOOK]
    assert deliver.autoretry_for == ()
    assert isinstance(deliver, OutageRetryTask)
    assert deliver.database_retry_window == 600
    assert deliver.max_retries == 7 and deliver.retry_backoff and deliver.acks_late
    dispatch = app.tasks[taskqueue.DISPATCH_WEBHOOKS]
    assert dispatch.autoretry_for == (TransientError,)
    entry = app.conf.beat_schedule["dispatch webhooks"]
    assert entry["task"] == taskqueue.DISPATCH_WEBHOOKS and entry["schedule"] == 5


def test_the_worker_command_defaults(tmp_path: Path) -> None:
    args = build_parser().parse_args(["worker"])
    argv = worker_argv(args, concurrency=2)
    assert "--pool=prefork" in argv and "--concurrency=2" in argv
    assert "--queues=ingest,classify,webhooks" in argv


def test_importing_the_queue_and_the_tasks_does_no_work(tmp_path: Path) -> None:
    # Given a fresh interpreter in an empty folder, when the task modules are
    # imported, then no model is loaded and nothing is written (no queue folders).
    code = (
        "import sys, deepscreen.taskqueue, worker.tasks, worker.embedded, worker.cli\n"
        "assert 'ai_edge_litert.interpreter' not in sys.modules, 'LiteRT loaded at import'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSCREEN_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_ingest_command_queues_batches_on_the_embedded_broker_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a migrated embedded setup and a plain folder path with 5 files, one not an image
    settings = Settings(data_dir=tmp_path / "data")
    migrate.upgrade(settings)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.jpg").write_bytes(b"jpeg %d" % i)
    (folder / "notes.txt").write_text("x")
    for name in [n for n in os.environ if n.startswith("DEEPSCREEN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DEEPSCREEN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DEEPSCREEN_CLASSIFY_BATCH_SIZE", "3")
    messages = settings.queue_dir / "messages"
    # When it is ingested twice
    assert main(["ingest", str(folder)]) == 0
    first = capsys.readouterr().out
    queued = sorted(messages.iterdir())
    assert main(["ingest", folder.as_uri()]) == 0
    second = capsys.readouterr().out
    # Then the first run queues two classify tasks (3 + 1 ids), the second nothing
    assert "4 new, 0 already known, 1 skipped by suffix; 2 classify tasks queued" in first
    assert len(queued) == 2
    assert "0 new, 4 already known, 1 skipped by suffix; 0 classify tasks queued" in second
    assert sorted(messages.iterdir()) == queued


def test_ingest_command_reports_a_missing_bucket_as_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEEPSCREEN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DEEPSCREEN_DATABASE_URL", raising=False)
    monkeypatch.delenv("DEEPSCREEN_BROKER_URL", raising=False)
    assert main(["ingest", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
