"""One behaviour, every implementation: each test runs on LocalStore and on S3Store
(SeaweedFS), through the `store` fixture."""

from __future__ import annotations

import hashlib
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from deepscreen.errors import InvalidKey, ObjectNotFound, OversizedImage, PermanentError
from deepscreen.storage import ImageStore, ObjectInfo


def keys(infos: list[ObjectInfo]) -> list[str]:
    return [info.key for info in infos]


def test_satisfies_the_protocol(store: ImageStore) -> None:
    assert isinstance(store, ImageStore)
    assert isinstance(store.bucket, str) and store.bucket


def test_put_then_get_round_trips_bytes(store: ImageStore) -> None:
    data = b"\xff\xd8\xff\xe0 not really a jpeg \x00\x01"
    etag = store.put("a/b/photo.jpg", data, content_type="image/jpeg")
    assert store.get("a/b/photo.jpg") == data
    # Single-part uploads: the etag is the content MD5 on both stores.
    assert etag == hashlib.md5(data).hexdigest()


def test_put_replaces_and_changes_etag(store: ImageStore) -> None:
    first = store.put("x.png", b"one")
    second = store.put("x.png", b"two")
    assert first != second
    assert store.get("x.png") == b"two"
    [info] = list(store.list())
    assert info.etag == second


def test_list_reports_bucket_key_etag_size_and_utc_time(store: ImageStore) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)
    etag = store.put("dir/one.jpg", b"12345")
    [info] = list(store.list())
    assert info == ObjectInfo(
        bucket=store.bucket, key="dir/one.jpg", etag=etag, size=5, last_modified=info.last_modified
    )
    assert info.last_modified.tzinfo is not None
    assert info.last_modified.utcoffset() == timedelta(0)
    assert before <= info.last_modified <= datetime.now(UTC) + timedelta(minutes=5)


def test_list_is_complete_across_pages(store: ImageStore) -> None:
    # Given more objects than one listing page holds (the S3 fixture uses 2 per page)
    names = ["b/2.jpg", "a.jpg", "b/1.jpg", "a/z.jpg", "c.png", "b.jpg", "a-b.jpg"]
    for name in names:
        store.put(name, name.encode())
    # When listing everything
    listed = keys(list(store.list()))
    # Then every key comes back exactly once. (Order is not part of the contract:
    # AWS sorts by code point, SeaweedFS lists folder by folder.)
    assert sorted(listed) == sorted(names)
    assert len(listed) == len(names)


def test_list_filters_by_prefix_as_a_string_prefix(store: ImageStore) -> None:
    for name in ["cats/1.jpg", "cats/2.jpg", "catsup.jpg", "dogs/1.jpg", "cats/deep/3.jpg"]:
        store.put(name, b"x")
    assert sorted(keys(list(store.list("cats/")))) == [
        "cats/1.jpg",
        "cats/2.jpg",
        "cats/deep/3.jpg",
    ]
    assert sorted(keys(list(store.list("cats")))) == [
        "cats/1.jpg",
        "cats/2.jpg",
        "cats/deep/3.jpg",
        "catsup.jpg",
    ]
    assert keys(list(store.list("cats/deep/3"))) == ["cats/deep/3.jpg"]
    assert list(store.list("nothing/here/")) == []


def test_list_filters_by_suffix_case_insensitively(store: ImageStore) -> None:
    for name in ["a.JPG", "b.jpeg", "c.png", "d.txt", "e.jpg.txt", "f"]:
        store.put(name, b"x")
    matching = keys(list(store.list(suffixes=[".jpg", ".JPEG", ".png"])))
    assert sorted(matching) == ["a.JPG", "b.jpeg", "c.png"]
    assert keys(list(store.list(suffixes=[]))) == []
    assert len(list(store.list(suffixes=None))) == 6


def test_list_uses_the_store_prefix_by_default(store: ImageStore) -> None:
    store.put("in/a.jpg", b"x")
    store.put("out/b.jpg", b"x")
    store.prefix = "in/"
    assert keys(list(store.list())) == ["in/a.jpg"]
    assert sorted(keys(list(store.list("")))) == ["in/a.jpg", "out/b.jpg"]


def test_get_enforces_the_size_cap(store: ImageStore) -> None:
    store.put("big.jpg", b"0123456789")
    assert store.get("big.jpg", max_bytes=10) == b"0123456789"
    with pytest.raises(OversizedImage, match="10 bytes is over the limit of 9"):
        store.get("big.jpg", max_bytes=9)


def test_oversized_is_a_permanent_image_failure(store: ImageStore) -> None:
    store.put("big.jpg", b"0123456789")
    with pytest.raises(PermanentError) as info:
        store.get("big.jpg", max_bytes=1)
    assert getattr(info.value, "code", None) == "oversized"


def test_missing_key_is_object_not_found(store: ImageStore) -> None:
    store.put("present.jpg", b"x")
    with pytest.raises(ObjectNotFound) as info:
        store.get("absent.jpg")
    assert isinstance(info.value, PermanentError)
    assert info.value.code == "missing_object"
    with pytest.raises(ObjectNotFound):
        store.get("present.jpg/below")


def test_exists(store: ImageStore) -> None:
    store.put("here/it.jpg", b"x")
    assert store.exists("here/it.jpg")
    assert not store.exists("here/other.jpg")
    assert not store.exists("here/it.jp")


@pytest.mark.parametrize("key", ["", "folder/"])
def test_empty_and_folder_keys_are_invalid(store: ImageStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.get(key)
    with pytest.raises(InvalidKey):
        store.put(key, b"x")


def test_url_serves_the_object(store: ImageStore) -> None:
    data = b"served bytes"
    store.put("web/ümlaut photo.jpg", data)
    url = store.url("web/ümlaut photo.jpg", expires=60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == data


def test_unusual_key_characters_round_trip(store: ImageStore) -> None:
    names = ["sp ace/ä é.jpg", "plus+sign.jpg", "percent%20.jpg", "semi;colon=1&x.jpg"]
    for name in names:
        store.put(name, name.encode())
    assert sorted(keys(list(store.list()))) == sorted(names)
    for name in names:
        assert store.get(name) == name.encode()
