"""Operations: ``/healthz`` for load balancers and ``/metrics`` for Prometheus.

``/healthz`` is public and says only whether the database and the broker answer.
``/metrics`` needs a logged-in session or an API token (``Authorization: Bearer``)
and serves, in Prometheus' text format, requests by endpoint and status with their
latency, and gauges read from the database at scrape time: verdicts by review
state, images by status, the age of the oldest item waiting for a human, and the
classification backlog (images waiting for a worker) with the age of its oldest.

Each app counts into its own registry. Under gunicorn (`dashboard.serve`) the
request metrics of every worker process are written to files in the folder named
by ``app.config["PROMETHEUS_MULTIPROC_DIR"]``, and a scrape sums them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from kombu import Connection
from kombu.exceptions import KombuError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from dashboard import db
from deepscreen import taskqueue
from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import ApiToken, ReviewState, User, Verdict
from deepscreen.db.session import make_engine

logger = logging.getLogger(__name__)

bp = Blueprint("ops", __name__)

#: ``app.config`` key: the prometheus_client multiprocess folder, when served by gunicorn.
MULTIPROC_CONFIG = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds a health check waits for the database or the broker.
HEALTH_TIMEOUT = 3
#: Request latency buckets, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))
#: Review states that are waiting for a human.
WAITING = (ReviewState.OPEN, ReviewState.ESCALATED)

_METRICS = "deepscreen.metrics"
_HEALTH_ENGINE = "deepscreen.health_engine"


@dataclass
class DashboardMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    database: DatabaseCollector


def init_app(app: Flask) -> None:
    """Count every request into a registry of this app's own."""
    registry = CollectorRegistry()
    collector = DatabaseCollector()
    registry.register(collector)
    app.extensions[_METRICS] = DashboardMetrics(
        registry=registry,
        requests=Counter(
            "deepscreen_dashboard_requests",
            "HTTP requests answered, by endpoint, method and status.",
            ["endpoint", "method", "status"],
            registry=registry,
        ),
        latency=Histogram(
            "deepscreen_dashboard_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint and method.",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        database=collector,
    )
    # First of all hooks, so the time includes loading the user and the CSRF check.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_timer)
    app.after_request(_count_request)


def _start_timer() -> None:
    g.ops_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    metrics: DashboardMetrics = current_app.extensions[_METRICS]
    # The endpoint name, not the path: unknown paths must not make a series each.
    endpoint = request.endpoint or "unmatched"
    metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
    started = g.get("ops_started")
    if started is not None:
        metrics.latency.labels(endpoint, request.method).observe(time.perf_counter() - started)
    return response


# ------------------------------------------------------------------ /healthz


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when the database and the broker answer, else 503 naming the one that did not.

    The reply names an error by its type only: never a URL, host or credential.
    """
    settings = db.settings()
    failures = {
        "database": check_database(_health_engine(settings)),
        "broker": check_broker(settings),
    }
    checks = {
        part: "ok" if error is None else f"error: {error}" for part, error in failures.items()
    }
    healthy = all(error is None for error in failures.values())
    response = jsonify(status="ok" if healthy else "unavailable", **checks)
    response.headers["Cache-Control"] = "no-store"
    return response, 200 if healthy else 503


def _failed(part: str, exc: BaseException) -> str:
    """Log why ``part`` failed; return the error's type name for the reply."""
    logger.warning("health check: %s unavailable: %s: %s", part, type(exc).__name__, exc)
    return type(exc).__name__


def _health_engine(settings: Settings) -> Engine:
    """An engine that gives up connecting after `HEALTH_TIMEOUT` seconds and keeps no
    connection (the app's own engine is used for SQLite, where connecting is local)."""
    engine: Engine | None = current_app.extensions.get(_HEALTH_ENGINE)
    if engine is None:
        if settings.is_sqlite:
            engine = current_app.extensions["deepscreen.engine"]
        else:
            engine = make_engine(
                settings, poolclass=NullPool, connect_args={"connect_timeout": HEALTH_TIMEOUT}
            )
        current_app.extensions[_HEALTH_ENGINE] = engine
    return engine


def check_database(engine: Engine) -> str | None:
    """``SELECT 1``; None if it worked, else the error's type name.

    On a DBAPI connection: no SQLAlchemy transaction, which on SQLite would take the
    write lock and wait for a busy worker.
    """
    try:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            cursor.close()
        finally:
            connection.close()
    except (SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:
        return _failed("database", exc)
    return None


def check_broker(settings: Settings) -> str | None:
    """None if the broker answers, else the error's type name: a Redis PING, the
    embedded queue's folders writable (or creatable, before the first task is sent),
    or a connection to another kind of broker."""
    if taskqueue.is_filesystem_broker(settings):
        options = taskqueue.broker_transport_options(settings)
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            if options.get(key) and not _writable(Path(options[key])):
                return _failed("broker", PermissionError(f"cannot write to {options[key]}"))
        return None
    if settings.broker_url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(
            settings.broker_url,
            socket_connect_timeout=HEALTH_TIMEOUT,
            socket_timeout=HEALTH_TIMEOUT,
        )
        try:
            client.ping()
        except (RedisError, OSError) as exc:
            return _failed("broker", exc)
        finally:
            client.close()
        return None
    connection = Connection(
        taskqueue.broker_url(settings),
        connect_timeout=HEALTH_TIMEOUT,
        transport_options=taskqueue.broker_transport_options(settings),
    )
    try:
        connection.connect()
    except (KombuError, OSError, *connection.connection_errors) as exc:
        return _failed("broker", exc)
    finally:
        connection.release()
    return None


def _writable(folder: Path) -> bool:
    """``folder``, or the nearest folder above it that exists, is writable."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


# ------------------------------------------------------------------ /metrics


@bp.get("/metrics")
def metrics() -> Response:
    """The Prometheus exposition, for a logged-in user or an API token."""
    if g.get("user") is None and bearer_user() is None:
        return Response(
            "authentication required: log in, or send Authorization: Bearer <API token>\n",
            status=401,
            mimetype="text/plain",
            headers={"WWW-Authenticate": 'Bearer realm="deepscreen"'},
        )
    app_metrics: DashboardMetrics = current_app.extensions[_METRICS]
    registry = app_metrics.registry
    folder = current_app.config.get(MULTIPROC_CONFIG)
    if folder:
        # Every gunicorn worker's request counts, summed from their files.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(folder))
        registry.register(app_metrics.database)
    response = Response(generate_latest(registry), status=200)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response


def bearer_user() -> User | None:
    """The active user whose unrevoked API token is in the ``Authorization`` header."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    # The same digest as the API tokens' (`dashboard.accounts.hash_token`): plain SHA-256
    # is enough for 256 random bits.
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
    row = db.session().scalar(
        select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    )
    if row is None or not row.user.active:
        return None
    return row.user


class DatabaseCollector(Collector):
    """Gauges counted in the database at every scrape: review states, image statuses
    and the age of the oldest item waiting for a human.

    Collected inside the ``/metrics`` request, through its session: on SQLite a second
    transaction would wait for the write lock the request's own one holds.
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "deepscreen_dashboard_database_up", "1 if the database answered this scrape, else 0."
        )
        session = db.session()
        try:
            states = _review_states(session)
            statuses = queries.count_images_by_status(session=session)
            oldest = session.scalar(
                select(func.min(Verdict.image_created_at)).where(Verdict.state.in_(WAITING))
            )
            backlog = queries.classify_backlog(session=session)
        except SQLAlchemyError as exc:
            session.rollback()
            logger.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queue = GaugeMetricFamily(
            "deepscreen_review_queue_size",
            "Verdicts by review state (open and escalated ones wait for a human).",
            labels=["state"],
        )
        for state, n in states.items():
            queue.add_metric([state.value], n)
        yield queue
        images = GaugeMetricFamily(
            "deepscreen_images", "Registered images by status.", labels=["status"]
        )
        for status, n in statuses.items():
            images.add_metric([status.value], n)
        yield images
        age = GaugeMetricFamily(
            "deepscreen_review_queue_oldest_age_seconds",
            "Age of the oldest image waiting for a human (0 when none waits).",
        )
        age.add_metric([], _age_seconds(oldest))
        yield age
        waiting = GaugeMetricFamily(
            "deepscreen_classify_backlog",
            "Images waiting for a worker (queued; events, submissions and scans alike).",
        )
        waiting.add_metric([], backlog.queued)
        yield waiting
        waited = GaugeMetricFamily(
            "deepscreen_classify_backlog_oldest_age_seconds",
            "How long the oldest image waiting for a worker has waited (0 when none waits).",
        )
        waited.add_metric([], _age_seconds(backlog.oldest_queued_at))
        yield waited


def _review_states(session: Session) -> dict[ReviewState, int]:
    counts = dict.fromkeys(ReviewState, 0)
    for state, n in session.execute(
        select(Verdict.state, func.count()).group_by(Verdict.state)
    ).all():
        counts[state] = int(n)
    return counts


def _age_seconds(since: datetime | None) -> float:
    if since is None:
        return 0.0
    return max(0.0, (utcnow() - since).total_seconds())
