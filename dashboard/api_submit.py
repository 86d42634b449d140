"""The submission API: ``POST /api/v1/images`` takes one image and queues it.

A moderator's (or an admin's) token is needed: viewers only read, and a submission
writes to the bucket and starts work. The upload is a multipart form with the image
in the ``image`` field, at most ``settings.submission_max_bytes`` (413), in a format
the worker decodes (JPEG, PNG, WebP, GIF, BMP, TIFF; anything else 415) and under
``settings.max_image_pixels`` (413). Only the uploaded bytes are used: the server
never fetches a URL.

The image is stored under ``<prefix><yyyy>/<mm>/<dd>/<random>.<ext>`` of
``settings.submission_url`` (empty: submissions are off, 503), registered with
source ``api``, and a classify task is sent after the commit; the answer is 202 with
the image id, whose ``GET /api/v1/images/<id>`` gives status and verdict.

Back-pressure: while more than ``settings.submission_max_backlog`` images wait for a
worker, a submission is refused before anything is stored: 503 with ``Retry-After``.

An optional ``callback_url`` (checked like any webhook URL, 400 if refused) becomes a
callback endpoint for this image's ``verdict.created``, ``review.completed`` and
``verdict.changed`` events; its signing secret is in this answer only.
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import warnings
from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, current_app, g, jsonify, request, url_for
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from dashboard import api, audit, db, outbox, subscriptions
from dashboard.auth import can
from dashboard.subscriptions import SubscriptionError
from deepscreen import webhooks
from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import ImageSource
from deepscreen.db.moderation import Role
from deepscreen.db.webhooks import EndpointKind, WebhookEndpoint
from deepscreen.errors import (
    ImageError,
    OversizedImage,
    StorageError,
    UndecodableImage,
    UnsupportedImage,
)
from deepscreen.storage import ImageStore, ObjectInfo, open_store

logger = logging.getLogger(__name__)

bp = Blueprint("api_submit", __name__, url_prefix=api.URL_PREFIX)

STORE_EXTENSION = "deepscreen.submission_store"
#: Room for the multipart framing and the callback field around the image itself.
MULTIPART_OVERHEAD = 64 * 1024
#: Bounds of the ``Retry-After`` (seconds) of a submission refused for the backlog.
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1, 300

#: Pillow format -> (file extension, content type). The formats the worker decodes.
FORMATS = {
    "JPEG": ("jpg", "image/jpeg"),
    "MPO": ("jpg", "image/jpeg"),  # a JPEG with extra frames (phone cameras)
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
    "BMP": ("bmp", "image/bmp"),
    "TIFF": ("tiff", "image/tiff"),
}


@dataclass(frozen=True)
class Identified:
    format: str
    extension: str
    content_type: str
    width: int
    height: int


@bp.before_request
def _moderators_only() -> Response | None:
    refused = api.authenticate()
    if refused is not None:
        return refused
    if not can(Role.MODERATOR):
        return api.error(403, "submitting needs a moderator's or an admin's token")
    return None


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"  # may carry a callback secret
    return response


@bp.post("/images")
def submit() -> Response:
    settings = db.settings()
    if not settings.submission_url:
        return api.error(503, "submissions are off: DEEPSCREEN_SUBMISSION_URL is not set")
    busy = over_backlog(settings)
    if busy is not None:
        return busy
    # Forms are otherwise capped far lower (app.config MAX_CONTENT_LENGTH).
    request.max_content_length = settings.submission_max_bytes + MULTIPART_OVERHEAD
    too_large = f"the image is over the limit of {settings.submission_max_bytes} bytes"
    try:
        upload = request.files.get("image")
        callback_url = request.form.get("callback_url", "").strip()
    except RequestEntityTooLarge:
        return api.error(413, too_large)
    if upload is None:
        return api.error(400, "expected a multipart/form-data body with the image in `image`")
    data = upload.stream.read(settings.submission_max_bytes + 1)
    if len(data) > settings.submission_max_bytes:
        return api.error(413, too_large)
    try:
        found = identify(data, max_pixels=settings.max_image_pixels)
    except OversizedImage as exc:
        return api.error(413, str(exc))
    except ImageError as exc:
        return api.error(415, f"not an accepted image: {exc}")
    if callback_url:
        try:
            callback_url = subscriptions.checked_url(callback_url, settings)
        except SubscriptionError as exc:
            return api.error(400, f"callback_url: {exc}")
    now = utcnow()
    try:
        store = _store(settings)
        key = submission_key(store.prefix, found.extension, now)
        etag = store.put(key, data, content_type=found.content_type)
    except StorageError as exc:
        logger.warning("submission refused: the store is unavailable: %s", exc)
        return api.error(503, "the image store is unavailable; try again later")
    dbs = db.session()
    [image_id] = queries.register_images(
        session=dbs,
        objects=[ObjectInfo(store.bucket, key, etag, len(data), now)],
        source=ImageSource.API,
        now=now,
    )
    callback = _callback(image_id, callback_url, now) if callback_url else None
    audit.record(
        "image.submit",
        target_type="image",
        target_id=image_id,
        after={
            "bucket": store.bucket,
            "key": key,
            "size": len(data),
            "format": found.format,
            "callback_endpoint_id": callback.id if callback is not None else None,
        },
    )
    outbox.after_commit(classify=[image_id])
    dbs.commit()
    logger.info("image %d submitted by %s as %s", image_id, g.user.username, key)
    location = url_for("api.image", image_id=image_id)
    response = jsonify(
        id=image_id,
        status="queued",
        bucket=store.bucket,
        key=key,
        links={"self": location, "dashboard": url_for("review.item", image_id=image_id)},
        callback=None
        if callback is None
        else {
            "id": callback.id,
            "url": callback.url,
            "event_types": callback.event_types,
            "secret": callback.secret,
        },
    )
    response.status_code = 202
    response.headers["Location"] = location
    return response


def over_backlog(settings: Settings) -> Response | None:
    """503 with ``Retry-After`` when more images wait for a worker than
    ``settings.submission_max_backlog``; None when there is room (or no bound).

    The wait suggested is how long the oldest waiting image has waited (about how long
    the queue takes to drain), within `RETRY_AFTER_MIN` and `RETRY_AFTER_MAX` seconds.
    """
    bound = settings.submission_max_backlog
    if not bound:
        return None
    backlog = queries.classify_backlog(session=db.session(), cap=bound)
    if backlog.queued <= bound:
        return None
    waited = 0.0
    if backlog.oldest_queued_at is not None:
        waited = (utcnow() - backlog.oldest_queued_at).total_seconds()
    retry_after = int(min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, math.ceil(waited))))
    logger.warning(
        "submission refused: more than %d images wait for a worker (retry after %d s)",
        bound,
        retry_after,
    )
    response = api.error(
        503,
        f"more than {bound} images are waiting for classification; try again in {retry_after} s",
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


def identify(data: bytes, *, max_pixels: int) -> Identified:
    """The format and size of an image from its header, checked by Pillow's ``verify``.

    Raises `UnsupportedImage` (a format the worker does not decode), `OversizedImage`
    (too many pixels) or `UndecodableImage` (not an image, or corrupt).
    """
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or "unknown"
                width, height = img.size
                if fmt not in FORMATS:
                    raise UnsupportedImage(f"{fmt} images are not accepted")
                if width * height > max_pixels:
                    raise OversizedImage(
                        f"{width}x{height} pixels is over the limit of {max_pixels}"
                    )
                img.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise OversizedImage(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise UndecodableImage("not an image Pillow recognises") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UndecodableImage(f"corrupt {fmt}: {exc}") from exc
    extension, content_type = FORMATS[fmt]
    return Identified(fmt, extension, content_type, width, height)


def submission_key(prefix: str, extension: str, now: datetime) -> str:
    """``<prefix><yyyy>/<mm>/<dd>/<random>.<ext>``; a prefix gets a trailing slash."""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return f"{prefix}{now:%Y/%m/%d}/{secrets.token_hex(16)}.{extension}"


def _store(settings: Settings) -> ImageStore:
    """The submission store, opened once per app (an S3 client is thread-safe)."""
    extensions = current_app.extensions
    store: ImageStore | None = extensions.get(STORE_EXTENSION)
    if store is None:
        store = extensions[STORE_EXTENSION] = open_store(
            settings.submission_url, settings, client=extensions.get("deepscreen.s3_client")
        )
    return store


def _callback(image_id: int, url: str, now: datetime) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        kind=EndpointKind.CALLBACK,
        url=url,
        description=f"callback of submitted image {image_id}",
        secret=webhooks.new_secret(),
        event_types=list(webhooks.EVENT_TYPES),
        image_id=image_id,
        active=True,
        created_by=g.user.id,
        created_at=now,
        updated_at=now,
    )
    db.session().add(endpoint)
    db.session().flush()
    return endpoint
