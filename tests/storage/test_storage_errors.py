"""Vendor failures become typed deepscreen errors: permanent ones are recorded,
transient ones retried. S3 cases run against real SeaweedFS or real sockets."""

from __future__ import annotations

import base64
import secrets
import socket
import threading
import urllib.error
import urllib.request
import zlib
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


@pytest.fixture(params=[True, False], ids=["lean-get", "boto3-get"])
def lean(request: pytest.FixtureRequest) -> bool:
    """Each GET case runs through `LeanGetter` and through boto3's ``get_object``."""
    return bool(request.param)


# ----------------------------------------------------------------- SeaweedFS


def test_missing_bucket(seaweedfs: S3Service, lean: bool) -> None:
    store = S3Store(
        f"ds-missing-{secrets.token_hex(6)}", make_s3_client(seaweedfs.settings(s3_lean_get=lean))
    )
    with pytest.raises(BucketNotFound) as info:
        list(store.list())
    assert isinstance(info.value, PermanentError)
    with pytest.raises(BucketNotFound):
        store.get("any.jpg")
    with pytest.raises(BucketNotFound):
        store.put("any.jpg", b"x")


def test_missing_key(seaweedfs: S3Service, s3_bucket: str, lean: bool) -> None:
    store = S3Store(s3_bucket, make_s3_client(seaweedfs.settings(s3_lean_get=lean)))
    with pytest.raises(ObjectNotFound, match=f"s3://{s3_bucket}/gone.jpg"):
        store.get("gone.jpg")


def test_wrong_secret_key_is_access_denied(
    seaweedfs: S3Service, s3_bucket: str, lean: bool
) -> None:
    client = make_s3_client(
        seaweedfs.settings(s3_secret_access_key="not-the-secret", s3_lean_get=lean)
    )
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


def test_size_cap_does_not_download_the_body(
    seaweedfs: S3Service, s3_bucket: str, lean: bool
) -> None:
    store = S3Store(s3_bucket, make_s3_client(seaweedfs.settings(s3_lean_get=lean)))
    store.put("large.bin", b"\0" * 200_000)
    with pytest.raises(ObjectNotFound):
        store.get("large.bi", max_bytes=10)
    with pytest.raises(OversizedImage, match="200000 bytes is over the limit of 1000"):
        store.get("large.bin", max_bytes=1000)


# ------------------------------------------------------------- real sockets


def test_unreachable_endpoint_is_transient(lean: bool) -> None:
    settings = Settings(
        s3_lean_get=lean,
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
    """Answers with the status and S3 error code named by the bucket: ``/503-SlowDown[-x]/key``.

    ``/200-<body>-<kind>[-x]/key`` answers 200 with ``<body>`` and, by ``kind``, its
    true CRC32 (``crc``), a wrong one (``badcrc``), or a Content-Length ten bytes more
    than it sends before closing the connection (``short``)."""

    #: (path, User-Agent) of every request, across all instances.
    agents: ClassVar[list[tuple[str, str]]] = []

    def _answer(self) -> None:
        self.agents.append((self.path, self.headers.get("User-Agent", "")))
        status, code, *rest = self.path.lstrip("/").split("/")[0].split("-")
        if status == "200":
            self._ok(code.encode(), rest[0])
            return
        body = (
            f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>test</Message></Error>"
        ).encode()
        self.send_response(int(status))
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if status.startswith("3"):  # where the bucket lives: boto3 redirects once, no more
            self.send_header("x-amz-bucket-region", "us-west-2")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _ok(self, body: bytes, kind: str) -> None:
        crc = zlib.crc32(body if kind != "badcrc" else body + b"!") & 0xFFFFFFFF
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body) + (10 if kind == "short" else 0)))
        if kind in ("crc", "badcrc"):
            self.send_header(
                "x-amz-checksum-crc32", base64.b64encode(crc.to_bytes(4, "big")).decode()
            )
        self.end_headers()
        self.wfile.write(body)
        if kind == "short":
            self.close_connection = True

    do_GET = do_PUT = do_HEAD = _answer

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


def _error_store(error_endpoint: str, bucket: str, *, lean: bool, attempts: int = 1) -> S3Store:
    settings = Settings(
        s3_lean_get=lean,
        s3_endpoint_url=error_endpoint,
        s3_access_key_id="key",
        s3_secret_access_key="secret",
        s3_max_attempts=attempts,
    )
    return S3Store(bucket, make_s3_client(settings))


def _agents(bucket: str) -> list[str]:
    return [agent for path, agent in _ErrorServer.agents if path.startswith(f"/{bucket}/")]


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
def test_http_errors_are_classified(
    error_endpoint: str, bucket: str, error: type, lean: bool
) -> None:
    with pytest.raises(error):
        _error_store(error_endpoint, bucket, lean=lean).get("key.jpg")


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
def test_s3_max_attempts_counts_every_request(
    error_endpoint: str, attempts: int, lean: bool
) -> None:
    # Given a store allowed `attempts` tries per call and an endpoint that is always busy
    bucket = f"503-SlowDown-{secrets.token_hex(4)}"
    store = _error_store(error_endpoint, bucket, lean=lean, attempts=attempts)
    # When one GET fails
    with pytest.raises(StorageUnavailable):
        store.get("key.jpg")
    # Then the endpoint saw exactly that many requests
    assert len(_agents(bucket)) == attempts


@pytest.mark.parametrize(("lean", "agent"), [(True, "python-urllib3"), (False, "Boto3")])
def test_s3_lean_get_chooses_who_sends_the_get(error_endpoint: str, lean: bool, agent: str) -> None:
    # Given an object whose body carries its true CRC32
    bucket = f"200-payload-crc-{secrets.token_hex(4)}"
    # When it is fetched with lean GETs on or off
    data = _error_store(error_endpoint, bucket, lean=lean).get("key.jpg")
    # Then the bytes are the same either way, and the request came from that path's sender
    assert data == b"payload"
    assert [a.split("/")[0] for a in _agents(bucket)] == [agent]


def test_lean_get_rejects_a_body_that_fails_its_crc32(error_endpoint: str) -> None:
    # Given a server whose checksum header does not match the body it sends, twice
    bucket = f"200-payload-badcrc-{secrets.token_hex(4)}"
    store = _error_store(error_endpoint, bucket, lean=True, attempts=2)
    # When a GET reads it, Then it is a transfer error, retried, and never returned
    with pytest.raises(StorageUnavailable, match="CRC32"):
        store.get("key.jpg")
    assert len(_agents(bucket)) == 2


@pytest.mark.parametrize("lean", [True, False], ids=["lean-get", "boto3-get"])
def test_a_body_cut_short_is_transient(error_endpoint: str, lean: bool) -> None:
    # Given a server that promises ten bytes more than it sends, then hangs up
    bucket = f"200-payload-short-{secrets.token_hex(4)}"
    # When a GET reads it, Then it is worth another try, not a truncated image
    with pytest.raises(StorageUnavailable):
        _error_store(error_endpoint, bucket, lean=lean).get("key.jpg")


def test_lean_get_hands_a_redirect_to_boto3(error_endpoint: str) -> None:
    # Given a bucket that answers with a redirect (an AWS bucket in another region)
    bucket = f"301-PermanentRedirect-{secrets.token_hex(4)}"
    # When it is fetched with lean GETs on, Then boto3 takes the request over and its
    # error is the one the boto3 path gives
    with pytest.raises(StorageRequestRejected):
        _error_store(error_endpoint, bucket, lean=True).get("key.jpg")
    senders = [a.split("/")[0] for a in _agents(bucket)]
    assert senders[0] == "python-urllib3"
    assert senders[1:] and set(senders[1:]) == {"Boto3"}  # boto3 follows the redirect once


def test_lean_get_reuses_its_connections(seaweedfs: S3Service, s3_bucket: str) -> None:
    # Given objects fetched one after another, errors and oversized bodies among them
    store = S3Store(s3_bucket, make_s3_client(seaweedfs.settings()))
    store.put("a.jpg", b"a" * 5000)
    for _ in range(3):
        with pytest.raises(ObjectNotFound):
            store.get("missing.jpg")
        with pytest.raises(OversizedImage):
            store.get("a.jpg", max_bytes=10)
        # Then every GET after them still reads the whole, right body
        assert store.get("a.jpg") == b"a" * 5000


@pytest.mark.parametrize("lean", [True, False], ids=["lean-get", "boto3-get"])
def test_keys_from_the_default_chain(
    seaweedfs: S3Service, s3_bucket: str, lean: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no keys in the settings, and the right ones where boto3's chain looks
    S3Store(s3_bucket, make_s3_client(seaweedfs.settings())).put("chain.jpg", b"chain")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_access_key)
    settings = seaweedfs.settings(
        s3_access_key_id=None, s3_secret_access_key=None, s3_lean_get=lean
    )
    # When an object is fetched, Then the request is signed with them
    assert S3Store(s3_bucket, make_s3_client(settings)).get("chain.jpg") == b"chain"


@pytest.mark.parametrize("lean", [True, False], ids=["lean-get", "boto3-get"])
def test_no_keys_anywhere_is_access_denied(
    seaweedfs: S3Service,
    s3_bucket: str,
    lean: bool,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # Given no keys in the settings nor anywhere boto3's chain looks
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = seaweedfs.settings(
        s3_access_key_id=None, s3_secret_access_key=None, s3_lean_get=lean
    )
    # When an object is fetched, Then it is a permanent access error, not a crash
    with pytest.raises(StorageAccessDenied):
        S3Store(s3_bucket, make_s3_client(settings)).get("any.jpg")
