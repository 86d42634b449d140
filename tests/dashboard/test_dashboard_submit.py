"""The submission API: an upload lands in the submission folder, is registered with
source ``api`` and queued for classification by task name; limits on size, type and
pixels; callback URLs checked and turned into a callback endpoint with its secret;
roles; submissions off. Every answer is checked against the OpenAPI document."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from api_client import ApiClient, queued_tasks
from dashboard_helpers import make_settings
from flask import Flask
from PIL import Image as PILImage
from sample_images import CORRUPT_FILES, image_bytes
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from test_dashboard_api import issue

from dashboard import create_app
from deepscreen.config import Settings
from deepscreen.db import migrate, queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus
from deepscreen.db.moderation import AuditEvent, Role, User
from deepscreen.db.webhooks import EndpointKind, WebhookEndpoint
from deepscreen.storage import ObjectInfo

MAX_BYTES = 100_000
MAX_PIXELS = 1_000_000


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "submissions"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(tmp_path: Path, folder: Path) -> Settings:
    settings = make_settings(
        tmp_path,
        submission_url=folder.as_uri(),
        submission_max_bytes=MAX_BYTES,
        max_image_pixels=MAX_PIXELS,
        webhook_allow_networks=("127.0.0.0/8",),
    )
    migrate.upgrade(settings)
    return settings


@pytest.fixture
def api(app: Flask, dbs: Session, make_user: Callable[..., User]) -> ApiClient:
    return ApiClient(app.test_client(), issue(dbs, make_user("submitter", Role.MODERATOR)))


def submit(api: ApiClient, data: bytes, name: str = "face.png", **form: str | None):  # type: ignore[no-untyped-def]
    fields: dict[str, object] = {"image": (io.BytesIO(data), name), **form}
    return api.post("/images", data=fields, content_type="multipart/form-data")


def stored(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def count(dbs: Session, column: Any) -> int:
    n = dbs.scalar(select(func.count(column)))
    dbs.commit()
    return n or 0


def test_an_upload_is_stored_registered_and_queued(
    api: ApiClient, dbs: Session, folder: Path, settings: Settings
) -> None:
    data = image_bytes(1, "PNG")
    response = submit(api, data)
    assert response.status_code == 202
    body = response.get_json()
    image_id = body["id"]
    assert body["status"] == "queued" and body["callback"] is None
    assert body["links"]["self"] == f"/api/v1/images/{image_id}"
    assert response.headers["Location"] == body["links"]["self"]
    # The file is under <yyyy>/<mm>/<dd>/<random>.png with the uploaded bytes
    [path] = stored(folder)
    key = path.relative_to(folder).as_posix()
    assert body["key"] == key and body["bucket"] == folder.as_uri()
    year, month, day, name = key.split("/")
    assert len(year) == 4 and len(month) == len(day) == 2 and name.endswith(".png")
    assert path.read_bytes() == data
    image = dbs.get_one(Image, image_id)
    assert (image.source, image.status, image.key, image.size) == (
        ImageSource.API,
        ImageStatus.QUEUED,
        key,
        len(data),
    )
    audit = dbs.scalar(select(AuditEvent).where(AuditEvent.action == "image.submit"))
    assert audit is not None and audit.username == "submitter" and audit.target_id == str(image_id)
    dbs.commit()
    # A classify wake-up was sent by name, after the commit, naming the one id
    assert queued_tasks(settings) == [("deepscreen.classify_pending", [[image_id]])]
    # And the read API reports it as queued, with no verdict yet
    one = api.get(f"/images/{image_id}").get_json()
    assert (one["status"], one["source"], one["verdict"]) == ("queued", "api", None)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_accepted_format_keeps_its_extension(api: ApiClient, folder: Path, fmt: str) -> None:
    response = submit(api, image_bytes(2, fmt), name="upload.bin")
    assert response.status_code == 202
    expected = {"JPEG": ".jpg", "TIFF": ".tiff"}.get(fmt, "." + fmt.lower())
    assert response.get_json()["key"].endswith(expected)


def test_limits_refuse_before_anything_is_stored(
    api: ApiClient, dbs: Session, folder: Path, settings: Settings
) -> None:
    big = PILImage.new("RGB", (1001, 1000), "white")  # compresses tiny, but 1 001 000 px
    buf = io.BytesIO()
    big.save(buf, "PNG")
    icon = io.BytesIO()
    PILImage.new("RGB", (16, 16)).save(icon, "ICO")
    cases = [
        (b"\0" * (MAX_BYTES + 1), 413, "over the limit"),
        (b"\0" * (MAX_BYTES + 100_000), 413, "over the limit"),  # refused while parsed
        (buf.getvalue(), 413, "pixels is over the limit"),
        (b"%PDF-1.4 not an image", 415, "not an accepted image"),
        (icon.getvalue(), 415, "ICO images are not accepted"),
        *[(data, 415, "not an accepted image") for data in CORRUPT_FILES.values()],
    ]
    for data, status, message in cases:
        response = submit(api, data)
        assert response.status_code == status, (message, response.get_json())
        assert message in response.get_json()["error"]
    missing = api.post("/images", data={"callback_url": "x"}, content_type="multipart/form-data")
    assert missing.status_code == 400 and "image" in missing.get_json()["error"]
    assert stored(folder) == [] and count(dbs, Image.id) == 0
    assert queued_tasks(settings) == []


def test_an_unsafe_callback_url_is_refused(api: ApiClient, dbs: Session, folder: Path) -> None:
    for url in ("http://10.0.0.1/cb", "http://169.254.169.254/", "file:///etc/passwd"):
        response = submit(api, image_bytes(3, "PNG"), callback_url=url)
        assert response.status_code == 400 and "callback_url" in response.get_json()["error"]
    assert stored(folder) == [] and count(dbs, Image.id) == 0
    assert count(dbs, WebhookEndpoint.id) == 0


def test_a_callback_url_becomes_an_endpoint_for_that_image(
    api: ApiClient, dbs: Session, make_user: Callable[..., User]
) -> None:
    url = "http://127.0.0.1:9/callback"
    body = submit(api, image_bytes(4, "PNG"), callback_url=url).get_json()
    callback = body["callback"]
    assert callback["url"] == url and callback["secret"].startswith("whsec_")
    assert callback["event_types"] == ["verdict.created", "review.completed", "verdict.changed"]
    endpoint = dbs.get_one(WebhookEndpoint, callback["id"])
    assert endpoint.kind is EndpointKind.CALLBACK and endpoint.image_id == body["id"]
    assert endpoint.secret == callback["secret"] and endpoint.active
    dbs.commit()
    # Admins find it among the callbacks, without its secret
    admin = ApiClient(api.client, issue(dbs, make_user("boss", Role.ADMIN)))
    listed = admin.get("/webhooks", query_string={"kind": "callback"}).get_json()["items"]
    assert [(e["id"], e["image_id"]) for e in listed] == [(callback["id"], body["id"])]
    assert callback["secret"] not in str(listed)
    assert admin.get("/webhooks").get_json()["items"] == []  # not a subscription


def test_viewers_and_anonymous_callers_cannot_submit(
    api: ApiClient, dbs: Session, make_user: Callable[..., User], folder: Path
) -> None:
    viewer = issue(dbs, make_user("looker", Role.VIEWER))
    fields = {"image": (io.BytesIO(image_bytes(5, "PNG")), "a.png")}
    refused = api.post("/images", token=viewer, data=fields, content_type="multipart/form-data")
    assert refused.status_code == 403
    fields = {"image": (io.BytesIO(image_bytes(5, "PNG")), "a.png")}
    anonymous = api.post("/images", token=None, data=fields, content_type="multipart/form-data")
    assert anonymous.status_code == 401
    admin = issue(dbs, make_user("root", Role.ADMIN))
    fields = {"image": (io.BytesIO(image_bytes(5, "PNG")), "a.png")}
    assert (
        api.post(
            "/images", token=admin, data=fields, content_type="multipart/form-data"
        ).status_code
        == 202
    )
    assert len(stored(folder)) == 1


def test_submissions_are_off_without_a_submission_url(
    settings: Settings, dbs: Session, make_user: Callable[..., User]
) -> None:
    off = create_app(dataclasses.replace(settings, submission_url=""), TESTING=True)
    api = ApiClient(off.test_client(), issue(dbs, make_user("early", Role.MODERATOR)))
    response = submit(api, image_bytes(6, "PNG"))
    assert response.status_code == 503
    assert "DEEPSCREEN_SUBMISSION_URL" in response.get_json()["error"]


def test_the_byte_limit_is_the_submission_setting_not_the_forms_one(
    settings: Settings, dbs: Session, make_user: Callable[..., User]
) -> None:
    # Given a limit above the 1 MiB that every other form is held to
    roomy = create_app(
        dataclasses.replace(settings, submission_max_bytes=4 * 1024 * 1024), TESTING=True
    )
    api = ApiClient(roomy.test_client(), issue(dbs, make_user("big", Role.MODERATOR)))
    noise = np.random.default_rng(0).integers(0, 256, size=(700, 800, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(noise).save(buf, "PNG")
    assert len(buf.getvalue()) > 1024 * 1024
    assert submit(api, buf.getvalue()).status_code == 202


def test_a_backlog_over_the_bound_answers_503_with_retry_after(
    settings: Settings, dbs: Session, folder: Path, make_user: Callable[..., User]
) -> None:
    # Given a bound of 2 images waiting, and 3 queued since a minute ago (no worker)
    bounded = create_app(dataclasses.replace(settings, submission_max_backlog=2), TESTING=True)
    api = ApiClient(bounded.test_client(), issue(dbs, make_user("busy", Role.MODERATOR)))
    a_minute_ago = utcnow() - timedelta(seconds=60)
    ids = queries.register_images(
        session=dbs,
        objects=[ObjectInfo("waiting", f"{i}.jpg", "etag", 1, a_minute_ago) for i in range(3)],
        source=ImageSource.EVENT,
        now=a_minute_ago,
    )
    dbs.commit()
    # When an image is submitted
    response = submit(api, image_bytes(7, "PNG"))
    # Then it is refused before anything is stored, with a wait of about the oldest's
    assert response.status_code == 503
    assert "more than 2 images are waiting" in response.get_json()["error"]
    assert 60 <= int(response.headers["Retry-After"]) <= 70
    assert stored(folder) == [] and count(dbs, Image.id) == 3
    # When the workers catch up to the bound, submissions are taken again
    dbs.execute(update(Image).where(Image.id == ids[0]).values(status=ImageStatus.DONE))
    dbs.commit()
    assert submit(api, image_bytes(7, "PNG")).status_code == 202
    # And a bound of 0 is no bound
    unbounded = create_app(dataclasses.replace(settings, submission_max_backlog=0), TESTING=True)
    api = ApiClient(unbounded.test_client(), api.token)
    assert submit(api, image_bytes(8, "PNG")).status_code == 202
    assert count(dbs, Image.id) == 5
