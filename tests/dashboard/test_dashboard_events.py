"""Bucket events (dashboard/events.py): S3 (AWS, MinIO) and SeaweedFS notifications become
registered images and classify tasks on the embedded (filesystem) queue; duplicates,
redeliveries and events that are not about new images in scope register nothing; the
shared secret is required; hostile bodies get a 4xx, never a 500."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from dashboard_helpers import make_settings
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from dashboard import create_app
from dashboard.bucket_events import seaweedfs_etag
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.models import Image, ImageSource, ImageStatus
from deepscreen.taskqueue import CLASSIFY_PENDING

SECRET = "events-secret-" + "y" * 24
HEADERS = {"X-Deepscreen-Events-Secret": SECRET}
#: "images" under incoming/ only; all of bucket "other".
PREFIXES = ("images/incoming/", "other")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Overrides conftest's: events on, filesystem broker under the test's folder."""
    settings = make_settings(
        tmp_path, events_secret=SECRET, events_prefixes=PREFIXES, broker_url="filesystem://"
    )
    migrate.upgrade(settings)
    return settings


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


# ------------------------------------------------------------------ helpers


def s3_record(
    bucket: str, key: str, etag: str = "0123456789abcdef0123456789abcdef", **extra: Any
) -> dict[str, Any]:
    """One record as MinIO sends it (``s3:`` event name, URL-encoded key)."""
    return {
        "eventVersion": "2.0",
        "eventSource": "minio:s3",
        "eventName": extra.pop("event", "s3:ObjectCreated:Put"),
        "s3": {
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {
                "key": quote_plus(key, safe="/"),
                "eTag": etag,
                "size": extra.pop("size", 1234),
                "sequencer": "17A5B1C2D3E4F",
                **extra,
            },
        },
    }


def s3_body(*records: dict[str, Any]) -> dict[str, Any]:
    first = records[0]["s3"] if records else {"bucket": {"name": ""}, "object": {"key": ""}}
    # MinIO's top-level summary; readers use Records.
    return {
        "EventName": records[0]["eventName"] if records else "",
        "Key": f"{first['bucket']['name']}/{first['object']['key']}",
        "Records": list(records),
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def weed_entry(name: str, content: bytes, *, directory: bool = False) -> dict[str, Any]:
    """A filer entry as SeaweedFS 4.x's S3 gateway writes it (captured, trimmed)."""
    md5 = hashlib.md5(content).digest()
    if directory:
        return {"name": name, "is_directory": True, "attributes": {"file_mode": 2147484159}}
    return {
        "name": name,
        "chunks": [{"size": len(content), "e_tag": b64(md5)}],
        "attributes": {
            "file_size": len(content),
            "mtime": 1795769281,
            "file_mode": 432,
            "mime": "image/jpeg",
            "md5": b64(md5),
        },
        "extended": {
            "Seaweed-X-Amz-ETag": b64(md5.hex().encode()),
            "Seaweed-X-Amz-Owner": b64(b"deepscreen-local"),
        },
    }


def weed_event(
    path: str,
    new: dict[str, Any] | None,
    old: dict[str, Any] | None = None,
    new_parent: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"delete_chunks": old is not None and new is None, "signatures": [1]}
    if new is not None:
        message["new_entry"] = new
        message["new_parent_path"] = new_parent or path.rsplit("/", 1)[0]
    if old is not None:
        message["old_entry"] = old
    event_type = "create" if old is None else "delete" if new is None else "update"
    return {"key": path, "event_type": event_type, "message": message}


def post(
    client: FlaskClient, kind: str, body: Any, headers: dict[str, str] | None = None, **kw: Any
) -> TestResponse:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(
        f"/events/{kind}",
        data=data,
        headers=HEADERS if headers is None else headers,
        content_type="application/json",
        **kw,
    )


def images(dbs: Session) -> list[Image]:
    dbs.expire_all()
    rows = list(dbs.scalars(select(Image).order_by(Image.id)))
    dbs.commit()  # end the read: SQLite would hold its lock against the app
    return rows


def queued(settings: Settings) -> list[tuple[str, list[int]]]:
    """(task name, image ids) of every message on the filesystem queue."""
    out: list[tuple[str, list[int]]] = []
    folder = settings.queue_dir / "messages"  # made with the Celery app, on first use
    for path in sorted(folder.iterdir()) if folder.exists() else []:
        message = json.loads(path.read_text())
        args = json.loads(base64.b64decode(message["body"]))[0]
        out.append((message["headers"]["task"], args[0]))
    return out


def created_json(bucket: bytes, obj: bytes) -> bytes:
    """A created record as raw JSON, for bodies json.dumps would not write."""
    return (
        b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "%s"}, '
        b'"object": {%s}}}]}' % (bucket, obj)
    )


def counts(response: TestResponse) -> dict[str, int]:
    assert response.status_code == 200, response.text
    return response.get_json()  # type: ignore[no-any-return]


# --------------------------------------------------------------------- S3


def test_an_s3_put_registers_the_image_and_queues_it_by_task_name(
    client: FlaskClient, dbs: Session, settings: Settings
) -> None:
    # When MinIO reports a new object under the configured prefix
    response = post(client, "s3", s3_body(s3_record("images", "incoming/a.jpg", '"abc123"')))
    # Then it is registered from an event, queued, and one classify task is sent
    assert counts(response) == {"registered": 1, "duplicate": 0, "ignored": 0, "tasks": 1}
    [image] = images(dbs)
    assert (image.bucket, image.key, image.etag, image.size) == (
        "images",
        "incoming/a.jpg",
        "abc123",
        1234,
    )
    assert image.source is ImageSource.EVENT and image.status is ImageStatus.QUEUED
    assert queued(settings) == [(CLASSIFY_PENDING, [image.id])]


def test_aws_records_without_the_s3_prefix_and_a_test_event_are_read(
    client: FlaskClient, dbs: Session
) -> None:
    record = s3_record("images", "incoming/b.png", event="ObjectCreated:CompleteMultipartUpload")
    record["eventSource"] = "aws:s3"
    assert counts(post(client, "s3", {"Records": [record]}))["registered"] == 1
    # AWS's s3:TestEvent when a notification is configured: no Records, nothing to do
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "images"}
    assert counts(post(client, "s3", test_event)) == {
        "registered": 0,
        "duplicate": 0,
        "ignored": 0,
        "tasks": 0,
    }
    assert [i.key for i in images(dbs)] == ["incoming/b.png"]


@pytest.mark.parametrize(
    "key",
    [
        "incoming/a photo+1.jpg",
        "incoming/é/日本 語.JPEG",
        "incoming/100%.png",
        "incoming/a&b=c?.jpg",
    ],
)
def test_url_encoded_keys_are_decoded(client: FlaskClient, dbs: Session, key: str) -> None:
    # Given a key S3-style encoded: spaces as '+', '+' itself as %2B
    record = s3_record("images", key)
    assert " " not in record["s3"]["object"]["key"]
    assert counts(post(client, "s3", s3_body(record)))["registered"] == 1
    assert [i.key for i in images(dbs)] == [key]


def test_duplicates_and_redeliveries_register_and_queue_nothing_new(
    client: FlaskClient, dbs: Session, settings: Settings
) -> None:
    body = s3_body(s3_record("images", "incoming/a.jpg"), s3_record("images", "incoming/a.jpg"))
    # The same object twice in one body: one image, one duplicate
    assert counts(post(client, "s3", body)) == {
        "registered": 1,
        "duplicate": 1,
        "ignored": 0,
        "tasks": 1,
    }
    # Redelivered: nothing new, nothing queued
    assert counts(post(client, "s3", body))["duplicate"] == 2
    assert len(images(dbs)) == 1 and len(queued(settings)) == 1
    # A new version of the object (another etag) is a new image
    newer = s3_body(s3_record("images", "incoming/a.jpg", etag="ffff"))
    assert counts(post(client, "s3", newer))["registered"] == 1
    assert [i.etag for i in images(dbs)] == ["0123456789abcdef0123456789abcdef", "ffff"]
    assert len(queued(settings)) == 2


def test_deletes_folders_parts_and_objects_out_of_scope_are_ignored(
    client: FlaskClient, dbs: Session, settings: Settings
) -> None:
    body = s3_body(
        s3_record("images", "incoming/gone.jpg", event="s3:ObjectRemoved:Delete"),
        s3_record("images", "incoming/gone.jpg", event="s3:ObjectAccessed:Get"),
        s3_record("images", "incoming/folder/"),  # a "folder" marker object
        s3_record("images", ".uploads/abc/0001.part.jpg"),  # a multipart temporary
        s3_record("images", "incoming/readme.txt"),  # not an image suffix
        s3_record("images", "elsewhere/a.jpg"),  # outside images/incoming/
        s3_record("unknown", "incoming/a.jpg"),  # bucket not configured
        s3_record("other", "anywhere/at/all.webp"),  # a bare bucket: all of it
    )
    assert counts(post(client, "s3", body)) == {
        "registered": 1,
        "duplicate": 0,
        "ignored": 7,
        "tasks": 1,
    }
    assert [(i.bucket, i.key) for i in images(dbs)] == [("other", "anywhere/at/all.webp")]


@pytest.mark.parametrize(
    "bucket", ["file:///srv/private", "file:", "/srv/private", "..", "Images", "images/../x"]
)
def test_an_event_naming_a_location_instead_of_a_bucket_registers_nothing(
    tmp_path: Path, dbs: Session, bucket: str
) -> None:
    # Given events on with no prefix restriction, and a private folder on the server
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.jpg").write_bytes(b"not for moderators")
    settings = make_settings(tmp_path, events_secret=SECRET)  # the fixture's database
    client = create_app(settings, TESTING=True).test_client()
    # When a sender with the secret names the folder (or any non-bucket) as the bucket
    body = s3_body(s3_record(bucket.replace("/srv/private", str(private)), "secret.jpg"))
    response = post(client, "s3", body)
    # Then the body is refused and nothing reaches the database or the queue
    assert response.status_code == 400 and response.is_json, response.text
    assert "bucket" in response.json["error"]
    assert images(dbs) == [] and queued(settings) == []


def test_only_the_allowed_buckets_are_registered(tmp_path: Path, dbs: Session) -> None:
    # Given DEEPSCREEN_EVENTS_BUCKETS=images and no prefixes
    settings = make_settings(
        tmp_path,
        events_secret=SECRET,
        events_buckets=("images",),
    )
    client = create_app(settings, TESTING=True).test_client()
    body = s3_body(s3_record("images", "any/a.jpg"), s3_record("elsewhere", "any/b.jpg"))
    # Then only the allowed bucket's object is registered
    assert counts(post(client, "s3", body))["registered"] == 1
    assert [(i.bucket, i.key) for i in images(dbs)] == [("images", "any/a.jpg")]


def test_by_default_the_allowed_buckets_are_the_configured_ones(
    tmp_path: Path, dbs: Session
) -> None:
    # Given the scanned bucket and no events setting but the secret
    settings = make_settings(
        tmp_path,
        events_secret=SECRET,
        scan_urls=("s3://scanned/in/",),
    )
    client = create_app(settings, TESTING=True).test_client()
    body = s3_body(s3_record("scanned", "in/a.jpg"), s3_record("unknown", "in/b.jpg"))
    assert counts(post(client, "s3", body)) == {
        "registered": 1,
        "duplicate": 0,
        "ignored": 1,
        "tasks": 1,
    }
    # And SeaweedFS paths whose bucket part is not a bucket name are ignored as well
    event = weed_event("/buckets/file:/srv/a.jpg", weed_entry("a.jpg", b"x"))
    assert counts(post(client, "seaweedfs", event))["ignored"] == 1
    assert [(i.bucket, i.key) for i in images(dbs)] == [("scanned", "in/a.jpg")]


# -------------------------------------------------------------- SeaweedFS


def test_a_seaweedfs_create_registers_with_the_etag_s3_reports(
    client: FlaskClient, dbs: Session, settings: Settings
) -> None:
    content = b"\xff\xd8 a jpeg"
    event = weed_event("/buckets/images/incoming/a b+c.jpg", weed_entry("a b+c.jpg", content))
    response = post(client, "seaweedfs", event, headers={"Authorization": f"Bearer {SECRET}"})
    assert counts(response) == {"registered": 1, "duplicate": 0, "ignored": 0, "tasks": 1}
    [image] = images(dbs)
    # The key is the filer path under the bucket, as it is (not URL-encoded)
    assert (image.bucket, image.key, image.size) == ("images", "incoming/a b+c.jpg", len(content))
    assert image.etag == hashlib.md5(content).hexdigest()
    assert image.source is ImageSource.EVENT
    assert queued(settings) == [(CLASSIFY_PENDING, [image.id])]
    # Redelivered (SeaweedFS retries when it sees no 2xx in time)
    response = post(client, "seaweedfs", event, headers={"Authorization": f"Bearer {SECRET}"})
    assert counts(response)["duplicate"] == 1 and len(queued(settings)) == 1


def test_seaweedfs_updates_and_renames_register_the_object_where_it_is_now(
    client: FlaskClient, dbs: Session
) -> None:
    old = weed_entry("a.jpg", b"one")
    # An overwrite: old and new entry, new content
    update = weed_event("/buckets/images/incoming/a.jpg", weed_entry("a.jpg", b"two"), old)
    assert counts(post(client, "seaweedfs", update))["registered"] == 1
    # A rename: "key" is the old path, the new one is new_parent_path + the new name
    rename = weed_event(
        "/buckets/images/staging/b.jpg",
        weed_entry("b.jpg", b"three"),
        weed_entry("b.jpg", b"three"),
        new_parent="/buckets/images/incoming/moved",
    )
    assert counts(post(client, "seaweedfs", rename))["registered"] == 1
    assert [(i.key, i.etag) for i in images(dbs)] == [
        ("incoming/a.jpg", hashlib.md5(b"two").hexdigest()),
        ("incoming/moved/b.jpg", hashlib.md5(b"three").hexdigest()),
    ]


def test_seaweedfs_bookkeeping_deletes_and_directories_are_ignored(
    client: FlaskClient, dbs: Session
) -> None:
    upload = "/buckets/images/.uploads/3dce52ea_ab51"
    events = [
        weed_event("/buckets/images/incoming/a.jpg", None, weed_entry("a.jpg", b"x")),
        weed_event("/buckets/images/incoming", weed_entry("incoming", b"", directory=True)),
        weed_event("/buckets/images", weed_entry("images", b"", directory=True)),
        weed_event(f"{upload}/0001_3f30.part", weed_entry("0001_3f30.part", b"part")),
        weed_event(f"{upload}/0001.jpg", weed_entry("0001.jpg", b"part")),
        weed_event("/buckets/.system/owners/x/images.jpg", weed_entry("images.jpg", b"o")),
        weed_event("/buckets/images/incoming/a.jpg.versions/v_1.jpg", weed_entry("v_1.jpg", b"v")),
        weed_event("/etc/not-a-bucket.jpg", weed_entry("not-a-bucket.jpg", b"n")),
        weed_event("/buckets/images/elsewhere/a.jpg", weed_entry("a.jpg", b"e")),
        weed_event("/buckets/images/incoming/notes.txt", weed_entry("notes.txt", b"t")),
    ]
    for event in events:
        assert counts(post(client, "seaweedfs", event)) == {
            "registered": 0,
            "duplicate": 0,
            "ignored": 1,
            "tasks": 0,
        }, event["key"]
    assert images(dbs) == []


def test_seaweedfs_etag_without_the_stored_one_is_derived_as_seaweedfs_does() -> None:
    one, two = hashlib.md5(b"part one").digest(), hashlib.md5(b"part two").digest()
    entry = weed_entry("a.jpg", b"content")
    del entry["extended"]
    assert seaweedfs_etag(entry) == hashlib.md5(b"content").hexdigest()
    del entry["attributes"]["md5"]
    entry["chunks"] = [{"e_tag": b64(one)}]
    assert seaweedfs_etag(entry) == one.hex()
    entry["chunks"] = [{"e_tag": b64(one)}, {"e_tag": b64(two)}]
    assert seaweedfs_etag(entry) == hashlib.md5(one + two).hexdigest() + "-2"
    # A multipart object: the gateway stores the S3 ETag ("<md5 of md5s>-<parts>")
    stored = {"extended": {"Seaweed-X-Amz-ETag": b64(b'"a45f1422f2dbe3d2890829dd76adba1b-2"')}}
    assert seaweedfs_etag(stored) == "a45f1422f2dbe3d2890829dd76adba1b-2"
    assert seaweedfs_etag({"name": "empty.jpg"}) == hashlib.md5(b"").hexdigest()


# ------------------------------------------------------------- the secret


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        (HEADERS, ""),
        ({"Authorization": f"Bearer {SECRET}"}, ""),
        ({"Authorization": f"bearer  {SECRET}"}, ""),
        ({}, f"?secret={SECRET}"),
    ],
    ids=["header", "bearer", "bearer-lowercase", "query"],
)
def test_the_secret_is_accepted_as_header_bearer_token_or_query(
    client: FlaskClient, headers: dict[str, str], query: str
) -> None:
    body = json.dumps(s3_body(s3_record("images", "incoming/a.jpg")))
    response = client.post("/events/s3" + query, data=body, headers=headers)
    assert counts(response)["registered"] + counts(response)["duplicate"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Deepscreen-Events-Secret": "wrong"},
        {"X-Deepscreen-Events-Secret": SECRET[:-1]},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {SECRET}"},
        {"X-Deepscreen-Events-Secret": "é" * 8},
    ],
)
@pytest.mark.parametrize("kind", ["s3", "seaweedfs"])
def test_a_wrong_or_missing_secret_is_refused(
    client: FlaskClient, dbs: Session, settings: Settings, headers: dict[str, str], kind: str
) -> None:
    body = s3_body(s3_record("images", "incoming/a.jpg"))
    if kind == "seaweedfs":
        body = weed_event("/buckets/images/incoming/a.jpg", weed_entry("a.jpg", b"x"))
    response = post(client, kind, body, headers=headers, query_string={"secret": "nope"})
    assert response.status_code == 401 and response.is_json
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert images(dbs) == [] and queued(settings) == []


def test_without_a_secret_configured_the_endpoints_are_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, events_secret="")
    migrate.upgrade(settings)
    client = create_app(settings, TESTING=True).test_client()
    for kind in ("s3", "seaweedfs"):
        # Even a request carrying what would be a secret
        response = post(client, kind, {"Records": []}, headers={"Authorization": "Bearer "})
        assert response.status_code == 404 and response.is_json, response.text
        response = post(client, kind, {"Records": []})
        assert response.status_code == 404


# ------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"Records": [',
        b"\xff\xfe\x00garbage",
        b"[]",
        b"null",
        b'"Records"',
        b'{"Records": {}}',
        b'{"Records": [1]}',
        b'{"Records": [{"eventName": 5}]}',
        b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}',
        created_json(b"images", b'"key": "incoming/a.jpg"'),  # no eTag
        created_json(b"images", b'"key": "incoming/a\\u0000.jpg", "eTag": "e"'),  # NUL
        created_json(b"images", b'"key": "incoming/\\ud800.jpg", "eTag": "e"'),  # lone surrogate
        created_json(b"", b'"key": "incoming/a.jpg", "eTag": "e"'),  # no bucket name
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser goes
        b'{"Records": [' + b"9" * 5000 + b"]}",  # an integer too long to read
    ],
)
def test_a_body_that_is_not_an_s3_notification_is_a_400(
    client: FlaskClient, dbs: Session, settings: Settings, body: bytes
) -> None:
    response = post(client, "s3", body)
    assert response.status_code == 400 and response.is_json, response.text
    assert images(dbs) == [] and queued(settings) == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"key": "/buckets/images/incoming/a.jpg"},
        {"key": "/buckets/images/incoming/a.jpg", "message": "x"},
        {"key": 7, "message": {}},
        {"key": "/b", "message": {"new_entry": []}},
        {"key": "/b", "message": {"new_entry": {"name": None}}},
        {
            "key": "/buckets/images/incoming/a.jpg",
            "message": {"new_entry": {"name": "a.jpg"}, "new_parent_path": 3},
        },
        {
            "key": "/buckets/images/incoming/a.jpg",
            "message": {"new_entry": {"name": "a.jpg", "attributes": {"md5": "@@not base64@@"}}},
        },
        {
            "key": "/buckets/images/incoming/a.jpg",
            "message": {"new_entry": {"name": "a.jpg", "chunks": [{"e_tag": "é"}]}},
        },
        {
            "key": "/buckets/images/incoming/a.jpg",
            "message": {"new_entry": {"name": "a.jpg", "chunks": ["x", "y"]}},
        },
        {
            "key": "/buckets/images/incoming/a.jpg",
            "message": {"new_entry": {"name": "a.jpg", "attributes": []}},
        },
    ],
)
def test_a_body_that_is_not_a_seaweedfs_notification_is_a_400(
    client: FlaskClient, dbs: Session, body: dict[str, Any]
) -> None:
    response = post(client, "seaweedfs", body)
    assert response.status_code == 400 and response.is_json, response.text
    assert images(dbs) == []


def test_odd_but_harmless_values_never_make_a_500(client: FlaskClient, dbs: Session) -> None:
    long_key = "incoming/" + "k" * 2000 + ".jpg"
    odd = [
        s3_record("images", long_key),  # longer than the key column: ignored
        s3_record("images", "incoming/a.jpg", etag="e" * 200),  # an etag too long: ignored
        s3_record("images", "incoming/huge.jpg", size=10**30),  # size unreadable: None
        s3_record("images", "incoming/bool.jpg", size=True),
        s3_record("images", "incoming/x.jpg"),
    ]
    odd[-1]["s3"]["object"]["key"] = "incoming/%zz%.jpg"  # not valid %-escapes: kept as is
    response = post(client, "s3", s3_body(*odd))
    assert counts(response) == {"registered": 3, "duplicate": 0, "ignored": 2, "tasks": 1}
    assert sorted((i.key, i.size) for i in images(dbs)) == [
        ("incoming/%zz%.jpg", 1234),
        ("incoming/bool.jpg", None),
        ("incoming/huge.jpg", None),
    ]


def test_an_oversized_body_is_refused_with_json(client: FlaskClient) -> None:
    response = post(client, "s3", b'{"Records": ["' + b"x" * (2 * 1024 * 1024) + b'"]}')
    assert response.status_code == 413 and response.is_json


# ------------------------------------------------------------ outages


def test_a_database_outage_is_a_503_so_the_sender_retries(tmp_path: Path) -> None:
    # Given a database that cannot be opened
    settings = make_settings(
        tmp_path,
        events_secret=SECRET,
        events_prefixes=PREFIXES,
        database_url=f"sqlite:///{tmp_path / 'missing' / 'db.sqlite3'}",
    )
    client = create_app(settings, TESTING=True).test_client()
    response = post(client, "s3", s3_body(s3_record("images", "incoming/a.jpg")))
    assert response.status_code == 503 and response.is_json, response.text


def test_a_broker_outage_keeps_the_image_registered_for_the_reconciler(
    tmp_path: Path, settings: Settings, dbs: Session
) -> None:
    # Given a broker nobody listens on (the database is fine)
    down = make_settings(
        tmp_path,
        events_secret=SECRET,
        events_prefixes=PREFIXES,
        database_url=settings.database_url,
        broker_url="redis://127.0.0.1:9/0",
    )
    client = create_app(down, TESTING=True).test_client()
    response = post(client, "s3", s3_body(s3_record("images", "incoming/a.jpg")))
    # Then the image is registered, queued in the database, and no task was sent
    assert counts(response) == {"registered": 1, "duplicate": 0, "ignored": 0, "tasks": 0}
    [image] = images(dbs)
    assert image.status is ImageStatus.QUEUED and image.source is ImageSource.EVENT
