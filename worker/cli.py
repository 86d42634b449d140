"""`deepscreen run`, `deepscreen worker` and `deepscreen beat`.

Registered on the `deepscreen` script through entry points, like the training
commands: the worker app registers the commands that need its tasks, so the
kernel never imports it. Registration imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
POOLS = ("prefork", "solo", "threads")


def register_run(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="classify a folder end to end with an embedded queue, worker and SQLite database",
        description="Register every image in FOLDER, classify it with an in-process Celery "
        "worker (filesystem queue under DEEPSCREEN_DATA_DIR) and print a summary. Results "
        "are kept in the database (default: SQLite under DEEPSCREEN_DATA_DIR); running "
        "again classifies only new or changed files.",
    )
    # Optional for argparse only: `run --serve FOLDER` hands FOLDER to --serve (see _Serve).
    p.add_argument("folder", type=Path, nargs="?", metavar="FOLDER")
    p.add_argument(
        "--max-rows",
        type=int,
        default=50,
        metavar="N",
        help="list every image when there are at most N, else only failed ones (default: 50)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: when stderr is a terminal)",
    )
    p.add_argument(
        "--serve",
        nargs="?",
        action=_Serve,
        const=8000,
        default=None,
        metavar="PORT",
        help="after the run, serve the dashboard on the results at http://127.0.0.1:PORT/ "
        "(default port: 8000) until Ctrl-C",
    )
    p.set_defaults(func=run, serve_folder=None)


class _Serve(argparse.Action):
    """``--serve [PORT]``: a value that is not a port number is the folder, so that
    ``run --serve FOLDER`` means what ``run FOLDER --serve`` does."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if isinstance(values, str) and not values.isdigit():
            namespace.serve_folder = Path(values)
            values = self.const
        namespace.serve = int(values)


def chosen_folder(args: argparse.Namespace) -> Path | None:
    """The FOLDER of ``deepscreen run``, wherever it stood; None if none or two were given."""
    given = [f for f in (args.folder, args.serve_folder) if f is not None]
    return given[0] if len(given) == 1 else None


def run(args: argparse.Namespace) -> int:
    from deepscreen.config import Settings
    from worker.embedded import OK, USAGE_ERROR, run_folder, serve_dashboard

    folder = chosen_folder(args)
    if folder is None:
        print("deepscreen run: error: give one FOLDER", file=sys.stderr)
        return USAGE_ERROR
    status = run_folder(
        folder,
        Settings.from_env(),
        progress=args.progress,
        max_rows=args.max_rows,
        serve_port=args.serve,
    )
    if status != OK or args.serve is None:
        return status
    return serve_dashboard(args.serve)


def register_worker(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "worker",
        help="run a Celery worker for the ingest, classify and webhooks queues",
        description="A Celery worker on DEEPSCREEN_BROKER_URL: prefork pool, one process per "
        "core (DEEPSCREEN_WORKER_CONCURRENCY), DEEPSCREEN_INFERENCE_THREADS LiteRT threads "
        "per process, the model loaded once per process after the fork.",
    )
    p.add_argument("--concurrency", type=int, default=None, metavar="N", help="worker processes")
    p.add_argument("--pool", choices=POOLS, default="prefork", help="default: prefork")
    p.add_argument(
        "--queues",
        default=None,
        metavar="Q1,Q2",
        help="queues to consume (default: ingest,classify,webhooks)",
    )
    p.add_argument("--loglevel", choices=LOG_LEVELS, default="INFO", type=str.upper)
    p.add_argument(
        "--hostname", default=None, metavar="NAME", help="node name (default: deepscreen-PID@host)"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics; 0 turns them off "
        "(default: DEEPSCREEN_WORKER_METRICS_PORT, 0)",
    )
    p.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="HOST",
        help="address the metrics are served on (default: 0.0.0.0, every interface)",
    )
    p.set_defaults(func=run_worker)


def worker_argv(args: argparse.Namespace, concurrency: int) -> list[str]:
    """The ``celery worker`` command line the options stand for."""
    from deepscreen.taskqueue import QUEUES

    return [
        "worker",
        f"--pool={args.pool}",
        f"--concurrency={concurrency}",
        f"--queues={args.queues or ','.join(QUEUES)}",
        f"--loglevel={args.loglevel}",
        f"--hostname={args.hostname or f'deepscreen-{os.getpid()}@%h'}",
        # No broadcast revokes or events are used: skip the start-up chatter.
        "--without-mingle",
        "--without-gossip",
    ]


def run_worker(args: argparse.Namespace) -> int:
    from deepscreen.config import Settings
    from worker.metrics import MetricsUnavailable, worker_metrics
    from worker.pool import PREFORK_POOL
    from worker.tasks import create_worker_app

    settings = Settings.from_env()
    concurrency = args.concurrency or settings.worker_concurrency or _cpu_count()
    port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    try:
        # Entered before the app starts: the pool processes fork with metrics set up.
        with worker_metrics(settings, port=port, host=args.metrics_host):
            app = create_worker_app(settings)
            # What --pool=prefork stands for: Celery's prefork pool with time limits
            # that survive a broker reconnect (worker.pool).
            app.conf.worker_pool = PREFORK_POOL
            return int(app.start(worker_argv(args, concurrency)) or 0)
    except MetricsUnavailable as exc:
        print(f"deepscreen worker: error: {exc}", file=sys.stderr)
        return 2


def register_beat(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "beat",
        help="run Celery beat: the reconciler, the periodic scans and the webhook dispatcher",
        description="Sends the reconcile task every DEEPSCREEN_RECONCILE_INTERVAL seconds, "
        "an ingest task per DEEPSCREEN_SCAN_URLS entry every DEEPSCREEN_SCAN_INTERVAL "
        "seconds, and the webhook dispatcher (due retries) every "
        "DEEPSCREEN_WEBHOOK_DISPATCH_INTERVAL seconds. Run exactly one.",
    )
    p.add_argument("--loglevel", choices=LOG_LEVELS, default="INFO", type=str.upper)
    p.set_defaults(func=run_beat)


def run_beat(args: argparse.Namespace) -> int:
    from deepscreen.config import Settings
    from deepscreen.taskqueue import create_celery

    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # the schedule file lives there
    app = create_celery(settings)
    return int(app.start(["beat", f"--loglevel={args.loglevel}"]) or 0)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
