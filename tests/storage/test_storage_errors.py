"""Vendor failures become typed deepscreen errors: permanent ones are recorded,
transient ones retried. S3 cases run against real SeaweedFS or real sockets."""

from __future__ import annotations

import secrets
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

from deepscreen.config import Settings
from deepscreen.errors import (
    BucketNotFound,
    ObjectNotFound,
    OversizedImage,
    PermanentError,
    StorageAccessDenied,
    StorageRequestRejected,
    StorageUnavailable,
    TransientError,
)
from deepscreen.storage import LocalStore, S3Store, make_s3_client

if TYPE_CHECKING:
    from conftest import S3Service


def closed_port() -> int:
    """A loopback port nothing listens on (free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------- SeaweedFS


def test_missing_bucket(seaweedfs: S3Service) -> None:
    store = S3Store(f"ds-missing-{secrets.token_hex(6)}", make_s3_client(seaweedfs.settings()))
    with pytest.raises(BucketNotFound) as info:
        list(store.list())
    assert isinstance(info.value, PermanentError)
    with pytest.raises(BucketNotFound):
        store.get("any.jpg")
    with pytest.raises(BucketNotFound):
        store.put("any.jpg", b"x")


def test_missing_key(seaweedfs: S3Service, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, make_s3_client(seaweedfs.settings()))
    with pytest.raises(ObjectNotFound, match=f"s3://{s3_bucket}/gone.jpg"):
        store.get("gone.jpg")


def test_wrong_secret_key_is_access_denied(seaweedfs: S3Service, s3_bucket: str) -> None:
    client = make_s3_client(seaweedfs.settings(s3_secret_access_key="not-the-secret"))
    store = S3Store(s3_bucket, client)
    with pytest.raises(StorageAccessDenied) as info:
        list(store.list())
    assert isinstance(info.value, PermanentError)
    with pytest.raises(StorageAccessDenied):
        store.get("any.jpg")
    with pytest.raises(StorageAccessDenied):
        store.exists("any.jpg")


def test_unknown_access_key_is_access_denied(seaweedfs: S3Service, s3_bucket: str) -> None:
    client = make_s3_client(seaweedfs.settings(s3_access_key_id="nobody"))
    with pytest.raises(StorageAccessDenied, match="InvalidAccessKeyId"):
        list(S3Store(s3_bucket, client).list())


def test_presigned_url_with_wrong_secret_is_refused(seaweedfs: S3Service, s3_bucket: str) -> None:
    S3Store(s3_bucket, make_s3_client(seaweedfs.settings())).put("p.jpg", b"x")
    bad = S3Store(s3_bucket, make_s3_client(seaweedfs.settings(s3_secret_access_key="wrong")))
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(bad.url("p.jpg"), timeout=10)
    assert info.value.code == 403


def test_size_cap_does_not_download_the_body(seaweedfs: S3Service, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, make_s3_client(seaweedfs.settings()))
    store.put("large.bin", b"\0" * 200_000)
    with pytest.raises(ObjectNotFound):
        store.get("large.bi", max_bytes=10)
    with pytest.raises(OversizedImage, match="200000 bytes is over the limit of 1000"):
        store.get("large.bin", max_bytes=1000)


# ------------------------------------------------------------- real sockets


def test_unreachable_endpoint_is_transient() -> None:
    settings = Settings(
        s3_endpoint_url=f"http://127.0.0.1:{closed_port()}",
        s3_access_key_id="key",
        s3_secret_access_key="secret",
        s3_max_attempts=1,
        s3_connect_timeout=1.0,
    )
    store = S3Store("bucket", make_s3_client(settings))
    with pytest.raises(StorageUnavailable) as info:
        list(store.list())
    assert isinstance(info.value, TransientError)
    with pytest.raises(StorageUnavailable):
        store.get("k.jpg")


class _ErrorServer(BaseHTTPRequestHandler):
    """Answers with the status and S3 error code named by the bucket: ``/503-SlowDown[-x]/key``."""

    #: Paths requested so far, across all instances.
    requests: ClassVar[list[str]] = []

    def _answer(self) -> None:
        self.requests.append(self.path)
        status, code = self.path.lstrip("/").split("/")[0].split("-")[:2]
        body = (
            f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>test</Message></Error>"
        ).encode()
        self.send_response(int(status))
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = _answer

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture(scope="module")
def error_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ErrorServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("bucket", "error"),
    [
        ("503-SlowDown", StorageUnavailable),
        ("503-ServiceUnavailable", StorageUnavailable),
        ("500-InternalError", StorageUnavailable),
        ("429-TooManyRequests", StorageUnavailable),
        ("403-AccessDenied", StorageAccessDenied),
        ("404-NoSuchBucket", BucketNotFound),
        ("404-NoSuchKey", ObjectNotFound),
        ("400-InvalidArgument", StorageRequestRejected),
    ],
)
def test_http_errors_are_classified(error_endpoint: str, bucket: str, error: type) -> None:
    settings = Settings(
        s3_endpoint_url=error_endpoint,
        s3_access_key_id="key",
        s3_secret_access_key="secret",
        s3_max_attempts=1,
    )
    store = S3Store(bucket, make_s3_client(settings))
    with pytest.raises(error):
        store.get("key.jpg")


# ------------------------------------------------------------------- local


def test_local_missing_root_is_bucket_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "nowhere")
    with pytest.raises(BucketNotFound):
        list(store.list())
    with pytest.raises(BucketNotFound):
        store.get("a.jpg")
    with pytest.raises(BucketNotFound):
        store.put("a.jpg", b"x")


@pytest.mark.parametrize("attempts", [1, 2])
def test_s3_max_attempts_counts_every_request(error_endpoint: str, attempts: int) -> None:
    # Given a store allowed `attempts` tries per call and an endpoint that is always busy
    settings = Settings(
        s3_endpoint_url=error_endpoint,
        s3_access_key_id="key",
        s3_secret_access_key="secret",
        s3_max_attempts=attempts,
    )
    bucket = f"503-SlowDown-{secrets.token_hex(4)}"
    # When one GET fails
    with pytest.raises(StorageUnavailable):
        S3Store(bucket, make_s3_client(settings)).get("key.jpg")
    # Then the endpoint saw exactly that many requests
    assert sum(path.startswith(f"/{bucket}/") for path in _ErrorServer.requests) == attempts
