"""Where images live: one `ImageStore` protocol, an S3 and a local-folder implementation.

Both speak in keys relative to a bucket (S3) or a root folder (local) and raise
only deepscreen errors: `BucketNotFound`, `ObjectNotFound`, `StorageAccessDenied`,
`InvalidKey` and `StorageRequestRejected` are permanent; `StorageUnavailable`
(unreachable endpoint, timeouts, throttling, 5xx) is transient. A GET over its
size cap raises `OversizedImage`, so the image is recorded as failed, not retried.

S3 goes through boto3, except `S3Store.get` on a client from `make_s3_client`: the
worker's one call per image, sent by `LeanGetter` (one signed urllib3 request).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import tempfile
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, unquote, urlsplit

import boto3
import urllib3
from botocore import exceptions as bex
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.client import BaseClient
from botocore.config import Config
from botocore.credentials import Credentials
from urllib3 import exceptions as uex

from deepscreen.config import Settings
from deepscreen.errors import (
    BucketNotFound,
    InvalidKey,
    ObjectNotFound,
    OversizedImage,
    StorageAccessDenied,
    StorageError,
    StorageRequestRejected,
    StorageUnavailable,
)

#: Prefix of the temporary files `LocalStore.put` writes before renaming them.
_TMP_PREFIX = ".deepscreen-tmp-"


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing reports it."""

    bucket: str
    key: str
    #: S3: the ETag without quotes. Local: MD5 hex of the content, which is what S3
    #: reports for an object uploaded in one part.
    etag: str
    size: int
    last_modified: datetime  # timezone-aware UTC


@runtime_checkable
class ImageStore(Protocol):
    """A flat namespace of immutable-ish blobs addressed by key."""

    #: S3 bucket name, or ``file:///root`` for a folder; stored as ``images.bucket``.
    bucket: str
    #: Default prefix for `list` (from the store URL).
    prefix: str

    def list(
        self, prefix: str | None = None, suffixes: Iterable[str] | None = None
    ) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (default: the store's) and ends
        with one of ``suffixes`` (case-insensitive; None = all), each once.

        The order is the store's own: AWS sorts by key, SeaweedFS lists folder
        by folder, LocalStore sorts by key.
        """
        ...

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's bytes; `OversizedImage` if larger than ``max_bytes``."""
        ...

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Store ``data`` under ``key`` (replacing it) and return its etag."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def url(self, key: str, expires: int = 3600) -> str:
        """A URL a browser can GET the object from for ``expires`` seconds."""
        ...


def match_suffix(key: str, suffixes: Iterable[str] | None) -> bool:
    """True if ``key`` ends with one of ``suffixes`` (case-insensitive) or there are none."""
    if suffixes is None:
        return True
    lowered = key.lower()
    return any(lowered.endswith(s.lower()) for s in suffixes)


def open_store(url: str, settings: Settings, *, client: BaseClient | None = None) -> ImageStore:
    """A store for ``s3://bucket/prefix`` or ``file:///path``.

    The URL's prefix becomes the store's default listing prefix; keys stay
    relative to the bucket (or folder), so they do not depend on it.
    """
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{url!r}: an S3 URL needs a bucket, as in s3://bucket/prefix")
        return S3Store(
            parts.netloc, client or make_s3_client(settings), prefix=parts.path.lstrip("/")
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r}: only local file URLs (file:///path) are supported")
        return LocalStore(Path(unquote(parts.path)))
    raise ValueError(f"{url!r}: expected an s3://bucket/prefix or file:///path URL")


def store_for_bucket(
    bucket: str, settings: Settings, *, client: BaseClient | None = None
) -> ImageStore:
    """The store an ``images.bucket`` value refers to (inverse of `ImageStore.bucket`)."""
    if bucket.startswith("file://"):
        return open_store(bucket, settings)
    return S3Store(bucket, client or make_s3_client(settings))


# --------------------------------------------------------------------------- S3

#: Error codes that mean "try again later" whatever the HTTP status.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "InternalError",
        "OperationAborted",
    }
)
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AuthorizationHeaderMalformed",
        "AccountProblem",
    }
)


def make_s3_client(settings: Settings) -> BaseClient:
    """A boto3 S3 client for ``settings`` (no request is made). Thread-safe; share it.

    With ``settings.s3_lean_get`` (the default), `S3Store.get` on this client sends
    its GETs through a `LeanGetter` made from the same settings."""
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing},
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        retries={"total_max_attempts": settings.s3_max_attempts, "mode": "standard"},
        max_pool_connections=LEAN_POOL_SIZE,
    )
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=config,
    )
    if settings.s3_lean_get:
        getter = LeanGetter.from_settings(settings)
        if getter is not None:
            _lean_getters[client] = getter
    return client


#: Connections kept per host, by boto3 and by `LeanGetter` (the worker fetches in 8 threads).
LEAN_POOL_SIZE = 10

#: S3 error codes that mean throttling: retried after a longer pause.
_THROTTLING_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException"})
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,500})</Message>")


class LeanGetter:
    """GET one object with one SigV4-signed urllib3 request, without boto3's call stack.

    In the worker, boto3's ``get_object`` cost 1.7-3 ms of CPU per image on 2 cores
    (endpoint rules evaluated for every key, hooks, user agent, response parsing),
    a fifth of a pool process's busy time next to a 7-15 ms classification. This
    signs with botocore's own `S3SigV4Auth` and reads with a pooled urllib3
    connection, and keeps what the boto3 path does: the same deepscreen errors for the
    same statuses and S3 error codes (`classify_s3_error`), ``s3_max_attempts`` in
    all with boto3's standard-mode backoff, the size cap read without downloading an
    oversized body, and the CRC32 check when the server sends one. Only path- and
    virtual-host addressing (``auto`` keeps boto3); a redirect (an AWS bucket in
    another region) is handed back to boto3. Thread-safe."""

    def __init__(
        self,
        *,
        endpoint_url: str,
        region: str,
        addressing: str,
        credentials: Credentials | None,
        connect_timeout: float,
        read_timeout: float,
        max_attempts: int,
    ) -> None:
        parts = urlsplit(endpoint_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{endpoint_url!r}: not an http(s) endpoint")
        if addressing not in ("path", "virtual"):
            raise ValueError(f"{addressing!r}: LeanGetter takes path or virtual addressing")
        self._scheme = parts.scheme
        self._host = parts.netloc
        self._base_path = parts.path
        self._region = region
        self._virtual = addressing == "virtual"
        self._credentials: Any = credentials
        self._look_up_credentials = credentials is None
        self._max_attempts = max(1, max_attempts)
        self._http = urllib3.PoolManager(
            maxsize=LEAN_POOL_SIZE,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LeanGetter | None:
        """The getter for ``settings``, or None where boto3 must decide (``auto``
        addressing, or only one of the two keys: boto3 then raises its own error)."""
        if settings.s3_addressing not in ("path", "virtual"):
            return None
        key, secret = settings.s3_access_key_id, settings.s3_secret_access_key
        if bool(key) != bool(secret):
            return None
        # No keys: boto3's default chain, looked up at the first GET, as boto3 does.
        credentials = Credentials(key, secret) if key and secret else None
        endpoint = settings.s3_endpoint_url or f"https://s3.{settings.s3_region}.amazonaws.com"
        return cls(
            endpoint_url=endpoint,
            region=settings.s3_region,
            addressing=settings.s3_addressing,
            credentials=credentials,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
            max_attempts=settings.s3_max_attempts,
        )

    def url(self, bucket: str, key: str) -> str:
        path = quote(key, safe="/~")
        if self._virtual:
            return f"{self._scheme}://{bucket}.{self._host}{self._base_path}/{path}"
        return f"{self._scheme}://{self._host}{self._base_path}/{bucket}/{path}"

    def get(self, bucket: str, key: str, max_bytes: int | None = None) -> bytes | None:
        """The object's bytes; None when S3 redirects or no credentials are found (let
        boto3 follow it, or raise its own error). Raises deepscreen storage errors only."""
        if self._look_up_credentials:
            self._credentials = boto3.session.Session().get_credentials()
            self._look_up_credentials = False
        if self._credentials is None:
            return None
        url = self.url(bucket, key)
        where = f"s3://{bucket}/{key}"
        for attempt in range(1, self._max_attempts):
            try:
                return self._get_once(url, where, max_bytes)
            except StorageUnavailable as exc:
                scale = 1.0 if isinstance(exc, _Throttled) else 0.05
                time.sleep(random.random() * min(scale * 2 ** (attempt - 1), 20.0))
        return self._get_once(url, where, max_bytes)  # the last attempt raises what it meets

    def _get_once(self, url: str, where: str, max_bytes: int | None) -> bytes | None:
        # Ask for the object's stored checksum, as boto3 does, to check the body with it.
        request = AWSRequest(method="GET", url=url, headers={"x-amz-checksum-mode": "ENABLED"})
        frozen = self._credentials.get_frozen_credentials()
        S3SigV4Auth(frozen, "s3", self._region).add_auth(request)
        try:
            response = self._http.request(
                "GET",
                url,
                headers=dict(request.headers.items()),
                preload_content=False,
                redirect=False,
            )
        except uex.HTTPError as exc:  # refused, reset, timed out
            raise StorageUnavailable(f"{where}: {exc}") from exc
        drained = False  # the whole body was read: the connection can serve the next GET
        try:
            if 300 <= response.status < 400:
                return None
            if response.status != 200:
                body = response.read(_ERROR_BODY_CAP)
                drained = len(body) < _ERROR_BODY_CAP
                raise _lean_error(response.status, body, where)
            length = response.headers.get("Content-Length")
            data = _read_capped(response.read, None if length is None else int(length), max_bytes)
            drained = True
            _check_crc32(response.headers.get("x-amz-checksum-crc32"), data, where)
            return data
        except uex.HTTPError as exc:  # the body broke off
            raise StorageUnavailable(f"{where}: {exc}") from exc
        finally:
            if not drained:
                response.close()  # unread bytes would poison the connection's next use
            response.release_conn()


class _Throttled(StorageUnavailable):
    """S3 asked us to slow down: retried after a longer pause (boto3's throttling scale)."""


#: Bytes of an error response read for its code and message.
_ERROR_BODY_CAP = 65536


#: The `LeanGetter` of each client made by `make_s3_client` with lean GETs on.
_lean_getters: weakref.WeakKeyDictionary[BaseClient, LeanGetter] = weakref.WeakKeyDictionary()


def _lean_error(status: int, body: bytes, where: str) -> StorageError:
    code_match = _ERROR_CODE.search(body)
    message_match = _ERROR_MESSAGE.search(body)
    code = code_match.group(1).decode("utf-8", "replace") if code_match else ""
    message = message_match.group(1).decode("utf-8", "replace") if message_match else ""
    text = f"{where}: {code or status} {message}".strip()
    if code in _THROTTLING_CODES or status == 429:
        return _Throttled(text)
    return classify_s3_error(code, status, text, has_key=True)


def _read_capped(read: Any, length: int | None, max_bytes: int | None) -> bytes:
    """The body from ``read(n)``/``read()``, or `OversizedImage` when its announced
    ``length`` or its bytes pass ``max_bytes``. Reads one byte past the cap: a wrong or
    absent Content-Length still cannot make us buffer an unbounded body."""
    if max_bytes is None:
        return bytes(read())
    if length is not None and length > max_bytes:
        raise OversizedImage(f"{length} bytes is over the limit of {max_bytes}")
    data = bytes(read(max_bytes + 1))
    if len(data) > max_bytes:
        raise OversizedImage(f"more than {max_bytes} bytes")
    return data


def _check_crc32(header: str | None, data: bytes, where: str) -> None:
    """Raise `StorageUnavailable` (a transfer error: try again) when the body does not
    match the server's full-object CRC32 (``x-amz-checksum-crc32``, base64)."""
    if not header or "-" in header:  # a multipart composite checksum is not the body's
        return
    try:
        expected = base64.b64decode(header, validate=True)
    except ValueError:
        return
    actual = (zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "big")
    if len(expected) == 4 and expected != actual:
        raise StorageUnavailable(f"{where}: body does not match its CRC32 checksum")


class S3Store:
    """A bucket on any S3-compatible service (AWS, SeaweedFS, MinIO...)."""

    def __init__(
        self, bucket: str, client: BaseClient, *, prefix: str = "", page_size: int = 1000
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._client = client
        #: Keys per ListObjectsV2 request (S3 caps it at 1000).
        self.page_size = page_size

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, prefix={self.prefix!r})"

    def list(
        self, prefix: str | None = None, suffixes: Iterable[str] | None = None
    ) -> Iterator[ObjectInfo]:
        suffixes = tuple(suffixes) if suffixes is not None else None
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self.prefix if prefix is None else prefix,
            PaginationConfig={"PageSize": self.page_size},
        )
        with self._translated():
            for page in pages:
                for item in page.get("Contents", ()):
                    key = item["Key"]
                    if key.endswith("/") or not match_suffix(key, suffixes):
                        continue  # folder markers, other file types
                    yield ObjectInfo(
                        bucket=self.bucket,
                        key=key,
                        etag=item["ETag"].strip('"'),
                        size=item["Size"],
                        last_modified=item["LastModified"].astimezone(UTC),
                    )

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        _check_key(key)
        lean = _lean_getters.get(self._client)
        if lean is not None:
            data = lean.get(self.bucket, key, max_bytes)
            if data is not None:
                return data
        with self._translated(key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                return _read_capped(body.read, response.get("ContentLength"), max_bytes)
            finally:
                body.close()

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        _check_key(key)
        extra = {"ContentType": content_type} if content_type else {}
        with self._translated(key):
            response = self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        return str(response["ETag"]).strip('"')

    def exists(self, key: str) -> bool:
        """HEAD the key. A missing bucket also answers 404, so it reads as False too."""
        _check_key(key)
        with self._translated(key):
            try:
                self._client.head_object(Bucket=self.bucket, Key=key)
            except bex.ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise
        return True

    def url(self, key: str, expires: int = 3600) -> str:
        """A presigned GET URL (signed locally; no request is made)."""
        _check_key(key)
        with self._translated(key):
            return str(
                self._client.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
                )
            )

    def _translated(self, key: str | None = None) -> AbstractContextManager[None]:
        return _translated(self.bucket, key)


@contextmanager
def _translated(bucket: str, key: str | None = None) -> Iterator[None]:
    """Re-raise botocore and urllib3 exceptions as deepscreen storage errors."""
    try:
        yield
    except (bex.BotoCoreError, bex.ClientError, uex.HTTPError) as exc:
        translated = translate_boto_error(exc, bucket=bucket, key=key)
        if translated is None:
            raise
        raise translated from exc


def translate_boto_error(
    exc: BaseException, *, bucket: str, key: str | None = None
) -> StorageError | None:
    """The deepscreen error for a botocore/urllib3 exception, or None if it is not one."""
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = _status(exc)
        message = f"{where}: {code or status} {error.get('Message', '')}".strip()
        return classify_s3_error(code, status, message, has_key=bool(key))
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return StorageAccessDenied(f"{where}: {exc}")
    if isinstance(
        exc,
        bex.ConnectionError  # EndpointConnectionError, timeouts, closed connections
        | bex.ResponseStreamingError
        | bex.IncompleteReadError
        | uex.HTTPError,
    ):
        return StorageUnavailable(f"{where}: {exc}")
    return None


def classify_s3_error(
    code: str, status: int | None, message: str, *, has_key: bool
) -> StorageError:
    """The deepscreen error for an S3 error response (its code and HTTP status)."""
    if code == "NoSuchBucket":
        return BucketNotFound(message)
    if code in ("NoSuchKey", "NotFound", "404") or status == 404:
        return ObjectNotFound(message) if has_key else BucketNotFound(message)
    if code in _AUTH_CODES or status in (401, 403):
        return StorageAccessDenied(message)
    if code in _TRANSIENT_CODES or status == 429 or (status or 0) >= 500:
        return StorageUnavailable(message)
    return StorageRequestRejected(message)


def _status(exc: Any) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


# ------------------------------------------------------------------------ local


class LocalStore:
    """A folder as a store: keys are POSIX paths relative to ``root``.

    The etag is the MD5 hex of the content, as S3 reports for single-part
    uploads, so the same file has the same etag in a folder and in a bucket and
    touching a file without changing it does not make it a new version. Listing
    therefore reads every listed file once. Keys that would leave ``root`` (``..``,
    absolute paths, symlinks pointing outside) are refused with `InvalidKey`.
    """

    def __init__(self, root: Path | str, *, prefix: str = "") -> None:
        self.root = Path(root).expanduser().absolute()
        self.bucket = self.root.as_uri()
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r}, prefix={self.prefix!r})"

    def list(
        self, prefix: str | None = None, suffixes: Iterable[str] | None = None
    ) -> Iterator[ObjectInfo]:
        prefix = self.prefix if prefix is None else prefix
        suffixes = tuple(suffixes) if suffixes is not None else None
        if not self.root.is_dir():
            raise BucketNotFound(f"{self.bucket}: no such folder")
        # Walk only below the deepest folder the prefix names, then filter by string
        # prefix like S3 does ("a/b" matches "a/b.jpg" and "a/bc/d.jpg").
        start = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        keys = sorted(
            key
            for key in self._walk(start)
            if key.startswith(prefix) and match_suffix(key, suffixes)
        )
        for key in keys:
            path = self.root / key
            try:
                stat = path.stat()
                etag = _md5_file(path)
            except FileNotFoundError:
                continue  # deleted since the walk
            except OSError as exc:
                raise self._os_error(exc, key) from exc
            yield ObjectInfo(
                bucket=self.bucket,
                key=key,
                etag=etag,
                size=stat.st_size,
                last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
            )

    def _walk(self, start: Path) -> Iterator[str]:
        real_root = self.root.resolve()
        for dirpath, dirnames, filenames in os.walk(start, onerror=None):
            dirnames.sort()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath, name)
                # Skip symlinks to files outside the root: get() would refuse them.
                if not path.resolve().is_relative_to(real_root) or not path.is_file():
                    continue
                yield path.relative_to(self.root).as_posix()

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as fh:  # the cap holds if the file grew since its size
                return _read_capped(fh.read, os.fstat(fh.fileno()).st_size, max_bytes)
        except OSError as exc:
            raise self._os_error(exc, key) from exc

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Write atomically (temporary file + rename). ``content_type`` is not kept."""
        path = self._path(key)
        if not self.root.is_dir():
            raise BucketNotFound(f"{self.bucket}: no such folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise self._os_error(exc, key) from exc
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def url(self, key: str, expires: int = 3600) -> str:
        """A ``file://`` URL; ``expires`` does not apply to local files."""
        return self._path(key).as_uri()

    def _os_error(self, exc: OSError, key: str) -> StorageError:
        where = f"{self.bucket}/{key}"
        if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
            if not self.root.is_dir():
                return BucketNotFound(f"{self.bucket}: no such folder")
            return ObjectNotFound(f"{where}: no such file")
        if isinstance(exc, PermissionError):
            return StorageAccessDenied(f"{where}: {exc.strerror}")
        return StorageUnavailable(f"{where}: {exc}")

    def _path(self, key: str) -> Path:
        _check_key(key)
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts or "\\" in key or "\0" in key:
            raise InvalidKey(f"{key!r} is not a relative POSIX path inside {self.bucket}")
        path = self.root.joinpath(*pure.parts)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidKey(f"{key!r} leads outside {self.bucket}")
        return path


def _check_key(key: str) -> None:
    if not key or key.endswith("/"):
        raise InvalidKey(f"{key!r} is not an object key")


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
