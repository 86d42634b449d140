"""LocalStore specifics: keys stay inside the root; open_store and store_for_bucket."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deepscreen.config import Settings
from deepscreen.errors import InvalidKey
from deepscreen.storage import LocalStore, S3Store, open_store, store_for_bucket


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.mark.parametrize(
    "key", ["../outside.jpg", "a/../../outside.jpg", "/etc/passwd", "a\\..\\b.jpg", "nul\0.jpg"]
)
def test_keys_escaping_the_root_are_refused(root: Path, key: str) -> None:
    store = LocalStore(root)
    with pytest.raises(InvalidKey):
        store.get(key)
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    assert not (root.parent / "outside.jpg").exists()


def test_symlink_out_of_the_root_is_neither_listed_nor_read(root: Path, tmp_path: Path) -> None:
    # Given a file outside the root and a symlink to it inside
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    os.symlink(secret, root / "link.jpg")
    (root / "inside.jpg").write_bytes(b"ok")
    store = LocalStore(root)
    # Then the link is invisible and unreadable
    assert [info.key for info in store.list()] == ["inside.jpg"]
    with pytest.raises(InvalidKey):
        store.get("link.jpg")


def test_symlink_within_the_root_is_followed(root: Path) -> None:
    (root / "real.jpg").write_bytes(b"data")
    os.symlink(root / "real.jpg", root / "alias.jpg")
    store = LocalStore(root)
    assert [info.key for info in store.list()] == ["alias.jpg", "real.jpg"]
    assert store.get("alias.jpg") == b"data"


def test_put_leaves_no_temporary_files(root: Path) -> None:
    store = LocalStore(root)
    store.put("deep/er/a.jpg", b"1")
    store.put("deep/er/a.jpg", b"2")
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == ["a.jpg"]


def test_half_written_temporary_files_are_not_listed(root: Path) -> None:
    (root / ".deepscreen-tmp-abc").write_bytes(b"partial")
    (root / "done.jpg").write_bytes(b"x")
    assert [info.key for info in LocalStore(root).list()] == ["done.jpg"]


def test_bucket_is_a_file_url_that_reopens_the_same_folder(tmp_path: Path) -> None:
    root = tmp_path / "with space ü"
    root.mkdir()
    store = LocalStore(root)
    store.put("a.jpg", b"x")
    assert store.bucket.startswith("file:///")
    again = store_for_bucket(store.bucket, Settings(data_dir=tmp_path))
    assert isinstance(again, LocalStore)
    assert again.root == root
    assert again.get("a.jpg") == b"x"


def test_open_store_s3_url_sets_bucket_and_prefix(tmp_path: Path) -> None:
    store = open_store("s3://photos/incoming/2024/", Settings(data_dir=tmp_path))
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("photos", "incoming/2024/")
    bare = open_store("s3://photos", Settings(data_dir=tmp_path))
    assert (bare.bucket, bare.prefix) == ("photos", "")


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri(), Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path


def test_store_for_bucket_name_is_s3(tmp_path: Path) -> None:
    store = store_for_bucket("photos", Settings(data_dir=tmp_path))
    assert isinstance(store, S3Store) and store.bucket == "photos"


@pytest.mark.parametrize("url", ["/plain/path", "http://host/x", "s3:///nobucket", "file://host/x"])
def test_open_store_rejects_other_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError):
        open_store(url, Settings(data_dir=tmp_path))
