"""The `store` fixture: every conformance test runs against LocalStore and S3Store."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepscreen.storage import ImageStore, LocalStore, S3Store, make_s3_client


@pytest.fixture(scope="session")
def s3_client(seaweedfs):  # type: ignore[no-untyped-def]
    """A client with the test credentials, for setting up buckets."""
    return make_s3_client(seaweedfs.settings())


@pytest.fixture
def s3_bucket(s3_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh, empty bucket (left in place: the SeaweedFS data dir is temporary)."""
    name = f"ds-test-{secrets.token_hex(6)}"
    s3_client.create_bucket(Bucket=name)
    yield name


@pytest.fixture(params=["local", "s3", "s3-boto3-get"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    """An empty store of each kind; S3 with its lean GETs and with boto3's."""
    if request.param == "local":
        root = tmp_path / "store root"  # a space: URLs and paths must cope
        root.mkdir()
        return LocalStore(root)
    bucket = request.getfixturevalue("s3_bucket")
    if request.param == "s3-boto3-get":
        seaweedfs = request.getfixturevalue("seaweedfs")
        return S3Store(bucket, make_s3_client(seaweedfs.settings(s3_lean_get=False)), page_size=2)
    return S3Store(bucket, request.getfixturevalue("s3_client"), page_size=2)
