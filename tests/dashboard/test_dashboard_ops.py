"""Operations: the public health check, the Prometheus metrics behind a login or an API
token, and ``deepscreen dashboard`` serving the app with gunicorn."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from dashboard_helpers import PASSWORD, make_settings
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from services import free_port
from sqlalchemy import update
from sqlalchemy.orm import Session

from dashboard import create_app
from dashboard.accounts import mint_token
from deepscreen.config import Settings
from deepscreen.db import migrate, queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus
from deepscreen.db.moderation import ApiToken, Role, User
from deepscreen.storage import ObjectInfo

ROOT = Path(__file__).resolve().parents[2]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` with exactly ``labels`` in an exposition, if any."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


@pytest.fixture
def make_token(dbs: Session) -> Callable[[User], str]:
    """``make_token(user)``: a new API token of ``user`` (returned in clear, stored hashed)."""

    def make(user: User) -> str:
        token, token_hash = mint_token()
        dbs.add(ApiToken(user_id=user.id, name="prometheus", token_hash=token_hash))
        dbs.commit()
        return token

    return make


# ------------------------------------------------------------------ /healthz


def test_the_health_check_is_public_and_says_what_answers(app: Flask) -> None:
    # Given an embedded setup (SQLite, filesystem queue not made yet) and no login
    response = app.test_client().get("/healthz")
    # Then it answers 200 with each part's state, never cached
    assert response.status_code == 200
    assert response.json == {"status": "ok", "database": "ok", "broker": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_the_health_check_pings_redis(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, broker_url=redis_url)
    migrate.upgrade(settings)
    response = create_app(settings, TESTING=True).test_client().get("/healthz")
    assert response.status_code == 200, response.text
    assert response.json == {"status": "ok", "database": "ok", "broker": "ok"}


def test_an_unreachable_broker_or_database_is_named_without_its_url(tmp_path: Path) -> None:
    # Given a Redis and a PostgreSQL URL, with passwords, where nothing listens
    redis_port, pg_port = free_port(), free_port()
    settings = make_settings(
        tmp_path,
        database_url=f"postgresql+psycopg://deepscreen:pg-s3cret@127.0.0.1:{pg_port}/deepscreen",
        broker_url=f"redis://:redis-s3cret@127.0.0.1:{redis_port}/0",
    )
    # When the health check runs
    response = create_app(settings, TESTING=True).test_client().get("/healthz")
    # Then it answers 503 naming both parts and the kind of error, and nothing else
    assert response.status_code == 503
    assert response.json == {
        "status": "unavailable",
        "database": "error: OperationalError",
        "broker": "error: ConnectionError",
    }
    for secret in ("s3cret", str(redis_port), str(pg_port), "127.0.0.1"):
        assert secret not in response.text


def test_an_unwritable_embedded_queue_fails_the_health_check(settings: Settings) -> None:
    # Given the queue folder's place taken by a file
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.queue_dir.write_text("not a folder")
    response = create_app(settings, TESTING=True).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json == {
        "status": "unavailable",
        "database": "ok",
        "broker": "error: PermissionError",
    }


# ------------------------------------------------------------------ /metrics


def test_metrics_need_a_login_or_a_live_api_token(
    app: Flask,
    viewer: FlaskClient,
    make_user: Callable[..., User],
    make_token: Callable[[User], str],
    dbs: Session,
) -> None:
    anonymous = app.test_client()
    # Given no credentials, or a token nobody was given
    response = anonymous.get("/metrics")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="deepscreen"'
    assert "deepscreen_" not in response.text
    wrong = anonymous.get("/metrics", headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401
    # When a logged-in viewer asks
    assert viewer.get("/metrics").status_code == 200
    # Or a client with a live token of an active user
    user = make_user("prometheus", Role.VIEWER)
    token = make_token(user)
    bearer = {"Authorization": f"Bearer {token}"}
    response = anonymous.get("/metrics", headers=bearer)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    # Then a revoked token, or one of a deactivated user, is refused again
    row = dbs.query(ApiToken).filter_by(user_id=user.id).one()
    row.revoked_at = utcnow()
    dbs.commit()
    assert anonymous.get("/metrics", headers=bearer).status_code == 401
    other = make_user("deactivated", Role.ADMIN)
    other_token = make_token(other)
    dbs.get(User, other.id).active = False  # type: ignore[union-attr]
    dbs.commit()
    refused = anonymous.get("/metrics", headers={"Authorization": f"Bearer {other_token}"})
    assert refused.status_code == 401


def test_metrics_count_requests_by_endpoint_and_status(app: Flask, viewer: FlaskClient) -> None:
    # Given a few requests: public, redirected, unknown
    anonymous = app.test_client()
    for _ in range(3):
        anonymous.get("/healthz")
    anonymous.get("/audit/")
    anonymous.get("/no/such/page/1234")
    # When the metrics are scraped
    text = viewer.get("/metrics").text
    # Then each request is counted under its endpoint (never its path) and status
    requests = "deepscreen_dashboard_requests_total"
    assert sample(text, requests, endpoint="ops.healthz", method="GET", status="200") == 3
    assert sample(text, requests, endpoint="audit.index", method="GET", status="302") == 1
    assert sample(text, requests, endpoint="unmatched", method="GET", status="404") == 1
    assert "1234" not in text
    latency = "deepscreen_dashboard_request_duration_seconds_count"
    assert sample(text, latency, endpoint="ops.healthz", method="GET") == 3


def test_every_app_counts_on_its_own(settings: Settings) -> None:
    first, second = create_app(settings, TESTING=True), create_app(settings, TESTING=True)
    first.test_client().get("/healthz")
    first.test_client().get("/healthz")
    second.test_client().get("/healthz")
    labels = {"endpoint": "ops.healthz", "method": "GET", "status": "200"}
    for app, expected in ((first, 2), (second, 1)):
        with app.app_context():  # the database gauges are read through the app's session
            registry = app.extensions["deepscreen.metrics"].registry
            assert registry.get_sample_value("deepscreen_dashboard_requests_total", labels) == (
                expected
            )


def test_metrics_report_the_review_queue_and_images_from_the_database(
    app: Flask, viewer: FlaskClient, seed: Callable[..., object]
) -> None:
    # Given 3 classified images: a fake and an uncertain one go to the queue, a
    # confident real does not (no audit sample in these settings)
    seed([0.9, 0.55, 0.05])
    # When the metrics are scraped
    text = viewer.get("/metrics").text
    # Then the gauges are what the database holds now
    assert sample(text, "deepscreen_dashboard_database_up") == 1
    assert sample(text, "deepscreen_review_queue_size", state="open") == 2
    assert sample(text, "deepscreen_review_queue_size", state="none") == 1
    assert sample(text, "deepscreen_review_queue_size", state="decided") == 0
    assert sample(text, "deepscreen_images", status="done") == 3
    assert sample(text, "deepscreen_images", status="queued") == 0
    oldest = sample(text, "deepscreen_review_queue_oldest_age_seconds")
    assert oldest is not None and 0 < oldest < 3600
    assert sample(text, "deepscreen_classify_backlog") == 0
    assert sample(text, "deepscreen_classify_backlog_oldest_age_seconds") == 0


def test_metrics_report_the_classification_backlog_and_its_oldest_image(
    viewer: FlaskClient, dbs: Session
) -> None:
    # Given 2 images waiting for a worker, the older queued 90 s ago, and one done
    now = utcnow()
    for key, queued_at in (("old.jpg", 90), ("new.jpg", 5), ("done.jpg", 300)):
        registered = now - timedelta(seconds=queued_at)
        queries.register_images(
            session=dbs,
            objects=[ObjectInfo("events", key, "etag", 1, registered)],
            source=ImageSource.EVENT,
            now=registered,
        )
    dbs.execute(update(Image).where(Image.key == "done.jpg").values(status=ImageStatus.DONE))
    dbs.commit()
    # When the metrics are scraped
    text = viewer.get("/metrics").text
    # Then the backlog is the 2 queued images, and its oldest has waited 90 s
    assert sample(text, "deepscreen_classify_backlog") == 2
    waited = sample(text, "deepscreen_classify_backlog_oldest_age_seconds")
    assert waited is not None and 90 <= waited < 120
    # And the stats page shows the same
    page = viewer.get("/stats/").text
    assert '<span class="num" id="backlog-count">2</span> images waiting for a worker' in page
    assert '<span class="num" id="backlog-oldest">1 min 3' in page


# ---------------------------------------------------------- deepscreen dashboard


def dashboard_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSCREEN_")}
    env.update(
        DEEPSCREEN_DATA_DIR=str(settings.data_dir),
        DEEPSCREEN_SECRET_KEY=settings.secret_key,
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture
def dashboard_process(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``start(settings, *args)``: ``deepscreen dashboard ARGS`` on ``settings``' data
    folder, in a session of its own, killed (with its workers) at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
        with (tmp_path / "dashboard.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "deepscreen.cli", "dashboard", *args],
                env=dashboard_env(settings),
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One GET, redirects not followed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def wait_until_serving(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if get(port, "/healthz").status == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the dashboard did not start: " + log.read_text()
        time.sleep(0.25)


def test_deepscreen_dashboard_serves_the_app_with_gunicorn(
    settings: Settings,
    dashboard_process: Callable[..., subprocess.Popen[bytes]],
    make_user: Callable[..., User],
    make_token: Callable[[User], str],
    tmp_path: Path,
) -> None:
    # Given a migrated SQLite database with an account that has an API token
    token = make_token(make_user("scraper", Role.VIEWER))
    # When `deepscreen dashboard` runs on a free port with 2 workers
    port = free_port()
    proc = dashboard_process(settings, "--port", str(port), "--workers", "2")
    wait_until_serving(proc, port, tmp_path / "dashboard.log")
    # Then the health check answers, and the pages want a login
    health = get(port, "/healthz")
    assert health.status == 200
    home = get(port, "/")
    assert home.status == 302
    assert home.headers["Location"].startswith("/login")
    # And the metrics sum the requests of both workers
    for _ in range(6):
        assert get(port, "/login").status == 200
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"})
    scraped = connection.getresponse()
    text = scraped.read().decode()
    connection.close()
    assert scraped.status == 200, text
    labels = {"endpoint": "auth.login", "method": "GET", "status": "200"}
    assert sample(text, "deepscreen_dashboard_requests_total", **labels) == 6
    assert sample(text, "deepscreen_dashboard_database_up") == 1
    # And the access log is on its output
    log = (tmp_path / "dashboard.log").read_text()
    assert '"GET /healthz HTTP/1.1" 200' in log
    # When it is sent SIGTERM, it stops cleanly and removes its metrics files
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, (tmp_path / "dashboard.log").read_text()
    assert list((settings.data_dir / "metrics").iterdir()) == []


def test_deepscreen_dashboard_refuses_a_database_not_at_head(
    tmp_path: Path, dashboard_process: Callable[..., subprocess.Popen[bytes]]
) -> None:
    settings = make_settings(tmp_path / "fresh")
    # Given no database at all
    missing = dashboard_process(settings, "--port", str(free_port()))
    assert missing.wait(60) == 1
    log = tmp_path / "dashboard.log"
    assert "no database at" in log.read_text() and "deepscreen db upgrade" in log.read_text()
    assert not (settings.data_dir / "deepscreen.sqlite3").exists()  # nor made an empty one
    # Given a database one migration behind
    migrate.upgrade(settings, "0001")
    behind = dashboard_process(settings, "--port", str(free_port()))
    assert behind.wait(60) == 1
    assert "schema is at 0001, not at" in log.read_text()


def test_login_page_of_the_served_app_sets_the_session_cookie_once_logged_in(
    settings: Settings,
    dashboard_process: Callable[..., subprocess.Popen[bytes]],
    make_user: Callable[..., User],
    tmp_path: Path,
) -> None:
    # Given an account, and the dashboard served with one worker
    make_user("alice", Role.MODERATOR)
    port = free_port()
    proc = dashboard_process(settings, "--port", str(port), "--workers", "1")
    wait_until_serving(proc, port, tmp_path / "dashboard.log")
    # When the login form is posted with the page's CSRF token
    page_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    page_conn.request("GET", "/login")
    page = page_conn.getresponse()
    html = page.read().decode()
    cookie = page.headers["Set-Cookie"].split(";", 1)[0]
    page_conn.close()
    from dashboard_helpers import csrf_from

    body = (
        f"username=alice&password={PASSWORD.replace(' ', '+')}&csrf_token={csrf_from(html)}"
    ).encode()
    post = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    post.request(
        "POST",
        "/login",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
    )
    answer = post.getresponse()
    answer.read()
    post.close()
    # Then the served app logs the user in (the form, CSRF and cookies work under gunicorn)
    assert answer.status == 302, json.dumps(dict(answer.headers))
    assert "deepscreen_session=" in answer.headers["Set-Cookie"]
