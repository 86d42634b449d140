"""Bucket events: object-created notifications become registered images and classify tasks.

``POST /events/s3`` takes S3 event notifications (AWS, MinIO) and ``POST
/events/seaweedfs`` SeaweedFS's filer webhook (``[notification.webhook]`` in its
``notification.toml``); the formats are read by `dashboard.bucket_events`. New objects
under the configured prefixes and image suffixes are registered with source ``event``,
committed, and only then sent to the classify queue by task name, so images are
classified as they land, with no scan.

Machines call these, not people: they are authenticated by the shared secret
``DEEPSCREEN_EVENTS_SECRET``, sent as an ``X-Deepscreen-Events-Secret`` header, as
``Authorization: Bearer <secret>`` (what SeaweedFS's ``bearer_token`` and MinIO's
``auth_token`` send), or as ``?secret=`` for a sender that can set no header (the URL
then shows in access logs: prefer a header). They take no login and no cookie, and
so no CSRF token (`dashboard.security.CSRF_EXEMPT`). With no secret configured they
do not exist (404).

Redeliveries are harmless: an object already registered by (bucket, key, etag), by
an earlier event or a scan, counts as a duplicate and is not queued again.

Answers: 200 ``{"registered", "duplicate", "ignored", "tasks"}``; 400 for a body that
is not a notification; 401 for a wrong or missing secret; 503 when the database is
unreachable (the sender retries).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from dashboard import db
from dashboard.bucket_events import (
    Created,
    Event,
    Ignored,
    MalformedEvent,
    out_of_scope,
    parse_s3,
    parse_seaweedfs,
)
from deepscreen import taskqueue
from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.models import ImageSource
from deepscreen.errors import TransientError

logger = logging.getLogger(__name__)

bp = Blueprint("events", __name__, url_prefix="/events")

#: Header carrying the shared secret.
SECRET_HEADER = "X-Deepscreen-Events-Secret"
#: Query parameter carrying it, for senders that cannot set headers.
SECRET_PARAM = "secret"
#: ``app.extensions`` key of the Flask app's Celery app (made on first use, shared).
CELERY_EXTENSION = "deepscreen.celery"

_celery_lock = threading.Lock()


@bp.post("/s3")
def s3() -> Response:
    """S3 event notifications (AWS, MinIO): ``{"Records": [...]}``."""
    return receive(parse_s3)


@bp.post("/seaweedfs")
def seaweedfs() -> Response:
    """One SeaweedFS filer notification: ``{"key", "event_type", "message"}``."""
    return receive(parse_seaweedfs)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    """JSON, whatever the sender accepts (e.g. 413 for an oversized body)."""
    return answer(exc.code or 500, error=exc.description or exc.name)


def receive(parse: Callable[[Any], list[Event]]) -> Response:
    """Authenticate, parse, register what is new, commit, enqueue; answer with counts."""
    settings = db.settings()
    if not settings.events_secret:
        return answer(404, error="bucket events are off (DEEPSCREEN_EVENTS_SECRET is empty)")
    if not authenticated(settings.events_secret):
        logger.warning("bucket event refused from %s: wrong or missing secret", request.remote_addr)
        response = answer(401, error="missing or wrong events secret")
        response.headers["WWW-Authenticate"] = 'Bearer realm="deepscreen-events"'
        return response
    try:
        events = parse(json.loads(request.get_data(cache=False)))
    except (ValueError, RecursionError) as exc:  # bad JSON or encoding, MalformedEvent
        reason = str(exc) if isinstance(exc, MalformedEvent) else "body is not valid JSON"
        logger.warning("bucket event refused from %s: %s", request.remote_addr, reason)
        return answer(400, error=f"not a bucket notification: {reason}")
    objects = wanted(events, settings)
    ignored = len(events) - len(objects)
    new_ids: list[int] = []
    if objects:
        dbs = db.session()
        try:
            new_ids = queries.register_images(
                session=dbs, objects=objects, source=ImageSource.EVENT
            )
            dbs.commit()
        except OperationalError as exc:
            dbs.rollback()
            logger.error("bucket event not registered, database unavailable: %s", exc.orig)
            return answer(503, error="database unavailable; send the event again later")
    # Committed: a worker finds every row it is sent.
    tasks = enqueue(new_ids, settings)
    if new_ids:
        logger.info("bucket events registered images %s (%d classify tasks)", new_ids, tasks)
    return answer(
        200,
        registered=len(new_ids),
        duplicate=len(objects) - len(new_ids),
        ignored=ignored,
        tasks=tasks,
    )


def wanted(events: Sequence[Event], settings: Settings) -> list[Created]:
    """The created objects in scope; the rest is logged (debug) with its reason."""
    objects = []
    for event in events:
        reason = event.reason if isinstance(event, Ignored) else out_of_scope(event, settings)
        if reason is None and isinstance(event, Created):
            objects.append(event)
        else:
            logger.debug("bucket event ignored: %s (%s)", reason, event)
    return objects


def authenticated(secret: str) -> bool:
    """Whether the request carries ``secret`` (header, bearer token or query parameter)."""
    expected = secret.encode("utf-8")
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    offered = [
        request.headers.get(SECRET_HEADER),
        token.strip() if scheme.lower() == "bearer" else None,
        request.args.get(SECRET_PARAM),
    ]
    return any(
        value is not None and hmac.compare_digest(value.encode("utf-8", "replace"), expected)
        for value in offered
    )


def enqueue(image_ids: Sequence[int], settings: Settings) -> int:
    """Send classify tasks for committed ``image_ids``; 0 if the broker is down (the
    images stay queued in the database and the reconciler sends them later)."""
    if not image_ids:
        return 0
    try:
        return taskqueue.enqueue_classify(
            celery_app(), image_ids, batch_size=settings.classify_batch_size
        )
    except TransientError as exc:
        logger.warning(
            "images %s registered but not queued (%s): the reconciler will queue them",
            list(image_ids),
            exc,
        )
        return 0


def celery_app() -> Celery:
    """The Flask app's Celery app, made once on first use (only task names are sent)."""
    extensions = current_app.extensions
    celery = extensions.get(CELERY_EXTENSION)
    if celery is None:
        with _celery_lock:
            celery = extensions.get(CELERY_EXTENSION)
            if celery is None:
                celery = extensions.setdefault(
                    CELERY_EXTENSION, taskqueue.create_celery(db.settings())
                )
    return celery  # type: ignore[no-any-return]


def answer(status: int, **body: Any) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response
