"""Bucket notifications, read: the S3 event format (AWS, MinIO) and SeaweedFS's filer webhook.

Both parsers turn a decoded JSON body into one `Created` per object that now exists,
or one `Ignored` (with a reason) per event that is not about a new object: deletes,
directories, SeaweedFS's own bookkeeping. A body that is not in the format raises
`MalformedEvent`: the sender is misconfigured, and nothing of the body is used.
`out_of_scope` then applies the settings (allowed buckets, image suffixes, bucket/prefix
pairs). A bucket is only ever a plain S3 bucket name from ``settings.allowed_event_buckets``:
the worker and the image proxy open whatever an image's bucket names, so a name such as
``file:///srv`` must never reach the database.

The etag of a `Created` is the one an S3 listing of the object reports, so a later
scan of the same object finds (bucket, key, etag) registered and skips it.

SeaweedFS (``[notification.webhook]`` in ``notification.toml``) posts one event per
request, ``{"key": "/buckets/<bucket>/<key>", "event_type": "create", "message":
<filer_pb.EventNotification>}``, the notification being Go's ``encoding/json`` of the
protobuf struct: snake_case names, empty fields left out, ``bytes`` in base64.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from deepscreen.config import Settings, is_s3_bucket_name
from deepscreen.storage import match_suffix

#: Where SeaweedFS's S3 gateway keeps buckets in the filer (its default).
SEAWEEDFS_BUCKETS = "/buckets/"
#: Extended attribute in which SeaweedFS's S3 gateway stores an object's ETag.
SEAWEEDFS_ETAG = "Seaweed-X-Amz-ETag"
#: Folder of a bucket where SeaweedFS keeps the parts of unfinished multipart uploads.
SEAWEEDFS_UPLOADS = ".uploads"
#: Suffix of the folder SeaweedFS keeps the versions of ``<key>`` in (``<key>.versions``).
SEAWEEDFS_VERSIONS = ".versions"

#: Column widths of ``images`` (bucket, key, etag): longer values cannot be registered.
MAX_BUCKET, MAX_KEY, MAX_ETAG = 512, 1024, 128
_MAX_SIZE = 2**63 - 1


class MalformedEvent(ValueError):
    """The body is not a notification in the expected format."""


@dataclass(frozen=True)
class Created:
    """An object that exists now (created, overwritten or renamed into place)."""

    bucket: str
    key: str
    etag: str
    size: int | None


@dataclass(frozen=True)
class Ignored:
    """An event that registers nothing, and why."""

    reason: str


Event = Created | Ignored


# ------------------------------------------------------------------------ S3


def parse_s3(payload: Any) -> list[Event]:
    """The records of an S3 event notification (AWS or MinIO).

    ``Records[].eventName`` is ``ObjectCreated:Put`` (AWS) or ``s3:ObjectCreated:Put``
    (MinIO); object keys are URL-encoded with ``+`` for spaces. A body without
    ``Records`` (AWS's ``s3:TestEvent``) has no events.
    """
    if not isinstance(payload, dict):
        raise MalformedEvent("expected a JSON object")
    records = payload.get("Records")
    if records is None:
        return []
    if not isinstance(records, list):
        raise MalformedEvent("Records must be a list")
    return [_s3_record(record, i) for i, record in enumerate(records)]


def _s3_record(record: Any, index: int) -> Event:
    where = f"Records[{index}]"
    if not isinstance(record, dict):
        raise MalformedEvent(f"{where} must be an object")
    name = _text(record.get("eventName"), f"{where}.eventName")
    if not name.removeprefix("s3:").startswith("ObjectCreated:"):
        return Ignored("not a create")
    s3 = _object(record.get("s3"), f"{where}.s3")
    bucket = _text(_object(s3.get("bucket"), f"{where}.s3.bucket").get("name"), "bucket name")
    if not is_s3_bucket_name(bucket):  # e.g. "file:///srv": a location, never a bucket
        raise MalformedEvent(f"{where}.s3.bucket.name is not an S3 bucket name")
    obj = _object(s3.get("object"), f"{where}.s3.object")
    key = _text(unquote_plus(_text(obj.get("key"), f"{where}.s3.object.key")), "object key")
    etag = _text(obj.get("eTag"), f"{where}.s3.object.eTag").strip('"')
    return _created(bucket, key, etag, _size(obj.get("size")))


# ----------------------------------------------------------------- SeaweedFS


def parse_seaweedfs(payload: Any) -> list[Event]:
    """The one event of a SeaweedFS filer webhook request."""
    if not isinstance(payload, dict):
        raise MalformedEvent("expected a JSON object")
    path = _text(payload.get("key"), "key")
    # "message" is what SeaweedFS sends; "message_data" is its struct's JSON name.
    message = payload.get("message", payload.get("message_data"))
    notification = _object(message, "message")
    entry = notification.get("new_entry")
    if entry is None:
        return [Ignored("delete")]
    entry = _object(entry, "message.new_entry")
    name = _text(entry.get("name"), "message.new_entry.name")
    parent = notification.get("new_parent_path")
    if parent is not None:  # a rename reports the old path as "key"
        path = _text(parent, "message.new_parent_path").rstrip("/") + "/" + name
    if entry.get("is_directory") is True:
        return [Ignored("directory")]
    if not path.startswith(SEAWEEDFS_BUCKETS):
        return [Ignored("not in a bucket")]
    bucket, _, key = path.removeprefix(SEAWEEDFS_BUCKETS).partition("/")
    if not bucket or bucket.startswith(".") or not key:
        return [Ignored("not an object")]  # /buckets/.system/..., the bucket folder itself
    if not is_s3_bucket_name(bucket):
        return [Ignored("not an S3 bucket name")]
    parts = key.split("/")
    if parts[0] == SEAWEEDFS_UPLOADS:
        return [Ignored("multipart upload part")]
    if any(part.endswith(SEAWEEDFS_VERSIONS) for part in parts[:-1]):
        return [Ignored("object version")]
    attributes = _object(entry.get("attributes", {}), "message.new_entry.attributes")
    return [_created(bucket, key, seaweedfs_etag(entry), _size(attributes.get("file_size")))]


def seaweedfs_etag(entry: dict[str, Any]) -> str:
    """The ETag SeaweedFS's S3 gateway reports for ``entry``.

    The stored one when the gateway wrote the object; else the content's MD5 (hex);
    else what SeaweedFS derives from the chunks: one chunk's MD5, or the MD5 of the
    chunks' MD5s followed by ``-<chunks>``, as S3 does for multipart uploads.
    """
    try:
        extended = entry.get("extended") or {}
        if isinstance(extended, dict) and isinstance(extended.get(SEAWEEDFS_ETAG), str):
            stored = _b64(extended[SEAWEEDFS_ETAG]).decode("ascii").strip('"')
            if stored:
                return stored
        attributes = entry.get("attributes") or {}
        md5 = attributes.get("md5") if isinstance(attributes, dict) else None
        if isinstance(md5, str) and len(digest := _b64(md5)) == 16:
            return digest.hex()
        chunks = entry.get("chunks") or []
        if isinstance(chunks, list) and chunks:
            digests = [_b64(_object(c, "chunk").get("e_tag", "")) for c in chunks]
            if len(digests) == 1:
                return digests[0].hex()
            return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        content = entry.get("content", "")  # small files can live in the entry itself
        return hashlib.md5(_b64(content) if isinstance(content, str) else b"").hexdigest()
    except MalformedEvent:
        raise
    except (ValueError, TypeError) as exc:  # not base64, not ASCII
        raise MalformedEvent(f"cannot read the entry's etag: {exc}") from exc


# -------------------------------------------------------------------- scope


def out_of_scope(obj: Created, settings: Settings) -> str | None:
    """Why ``obj`` is not for us (a reason), or None when it should be registered."""
    if obj.bucket not in settings.allowed_event_buckets:
        return "bucket not allowed"
    if obj.key.endswith("/"):
        return "directory"
    if obj.key.split("/", 1)[0] == SEAWEEDFS_UPLOADS:
        return "multipart upload part"
    if not match_suffix(obj.key, settings.image_suffixes or None):
        return "not an image suffix"
    if settings.events_prefixes and not any(
        obj.bucket == bucket and obj.key.startswith(prefix)
        for bucket, prefix in prefix_pairs(settings.events_prefixes)
    ):
        return "outside the configured prefixes"
    return None


def prefix_pairs(values: Iterable[str]) -> list[tuple[str, str]]:
    """``bucket/prefix`` settings as (bucket, prefix); a bare ``bucket`` is the whole bucket."""
    pairs = []
    for value in values:
        bucket, _, prefix = value.strip().lstrip("/").partition("/")
        pairs.append((bucket, prefix))
    return pairs


# ------------------------------------------------------------------ helpers


def _created(bucket: str, key: str, etag: str, size: int | None) -> Event:
    if len(bucket) > MAX_BUCKET or len(key) > MAX_KEY or not etag or len(etag) > MAX_ETAG:
        return Ignored("name or etag too long")
    return Created(bucket=bucket, key=key, etag=etag, size=size)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedEvent(f"{what} must be an object")
    return value


def _text(value: Any, what: str) -> str:
    """A non-empty string the database can store (no NUL, valid Unicode)."""
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{what} must be a non-empty string")
    if "\x00" in value:
        raise MalformedEvent(f"{what} contains NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from "\ud800" escapes
        raise MalformedEvent(f"{what} is not valid Unicode") from exc
    return value


def _size(value: Any) -> int | None:
    """A byte count, or None when it is absent or not a sane integer (it is informative)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SIZE:
        return None
    return value


def _b64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)
