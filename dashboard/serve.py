"""``deepscreen dashboard``: the dashboard under gunicorn.

The command checks that the database schema is at the newest migration (it
migrates nothing itself: that is ``deepscreen db upgrade``'s job, or the compose
file's ``migrate`` service) and then runs gunicorn in this process, with
``--workers`` sync worker processes that each build the app after the fork, and
the access log on stdout. Request metrics of all workers are summed through
prometheus_client's multiprocess mode, in ``<DATA_DIR>/metrics/dashboard-<pid>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from deepscreen.config import Settings

#: prometheus_client reads its multiprocess folder from this variable.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_PREFIX = "dashboard-"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="serve the moderator dashboard (gunicorn)",
        description="Serve the dashboard on http://HOST:PORT/ with gunicorn, on the database "
        "of DEEPSCREEN_DATABASE_URL (default: SQLite under DEEPSCREEN_DATA_DIR), which must "
        "be migrated to head (deepscreen db upgrade). Create the first account with "
        "`deepscreen create-user NAME --role admin`. /healthz is public; /metrics needs a "
        "login or an API token.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument(
        "--workers", type=_positive, default=2, metavar="N", help="worker processes (default: 2)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    missing = [name for name in ("flask", "gunicorn") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"deepscreen dashboard: error: {' and '.join(missing)} not installed: "
            "pip install 'deepscreen[dashboard]' (or -e \".[dashboard]\" in a checkout)",
            file=sys.stderr,
        )
        return 2
    settings = Settings.from_env()
    problem = schema_problem(settings)
    if problem is not None:
        print(f"deepscreen dashboard: error: {problem}", file=sys.stderr)
        return 1
    metrics = settings.data_dir / "metrics" / f"{DIR_PREFIX}{os.getpid()}"
    _prepare_metrics_dir(metrics)
    options = {
        "bind": f"{_bind_host(args.host)}:{args.port}",
        "workers": args.workers,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "deepscreen-dashboard",
    }
    try:
        gunicorn_application(settings, options, metrics_dir=metrics).run()
    finally:
        shutil.rmtree(metrics, ignore_errors=True)
    return 0


def schema_problem(settings: Settings) -> str | None:
    """Why the dashboard cannot run on ``settings``' database, or None when its schema
    is at the newest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    from deepscreen.db import migrate
    from deepscreen.db.session import make_engine

    url = make_url(settings.database_url)
    database = url.database or ""
    on_disk = url.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if on_disk and not Path(database).expanduser().is_file():
        # Connecting would create an empty file: say what is missing instead.
        return (
            f"no database at {database}: "
            "run `deepscreen db upgrade` (or `deepscreen run FOLDER`) first"
        )
    heads = set(ScriptDirectory.from_config(migrate.alembic_config(settings)).get_heads())
    engine = make_engine(settings, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return f"cannot reach the database: {reason[0] if reason else type(exc).__name__}"
    finally:
        engine.dispose()
    if current != heads:
        at = ", ".join(sorted(current)) or "no migration"
        return (
            f"the database schema is at {at}, not at {', '.join(sorted(heads))} (head): "
            "run `deepscreen db upgrade` first"
        )
    return None


def gunicorn_application(settings: Settings, options: dict[str, Any], *, metrics_dir: Path) -> Any:
    """A gunicorn application running `dashboard.create_app`, configured from
    ``options`` (gunicorn settings) rather than the command line."""
    from gunicorn.app.base import BaseApplication

    class DashboardApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # In each worker, after the fork: its own engine and connections.
            from dashboard import create_app
            from dashboard.ops import MULTIPROC_CONFIG

            return create_app(settings, **{MULTIPROC_CONFIG: str(metrics_dir)})

    return DashboardApplication()


def _prepare_metrics_dir(path: Path) -> None:
    """An empty ``path`` that prometheus_client counts into, in this process and in the
    workers it forks; folders of dashboards that are gone are removed."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for other in path.parent.glob(f"{DIR_PREFIX}*"):
        pid = other.name.removeprefix(DIR_PREFIX)
        if other != path and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(other, ignore_errors=True)
    os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client chooses how to store values when first imported; choose again
    # in case something imported it before the variable was set.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def _bind_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
