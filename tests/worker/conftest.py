"""Fixtures for the pipeline functions: a fresh database per module on both backends,
a runtime over it with the default model, and folders of generated images.

Each module gets its own database because these tests commit (the pipeline opens
its own transactions) and register a model version as active; each test uses its
own folder, hence its own bucket, so tests in a module never see each other's rows.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepscreen.config import Settings
from deepscreen.inference import Classifier
from worker.runtime import Runtime

#: Not an image at all, and a PNG cut off after its signature.
CORRUPT_FILES = {"corrupt.jpg": b"this is not a jpeg", "truncated.png": b"\x89PNG\r\n\x1a\n\0\0"}


def image_bytes(seed: int, fmt: str = "JPEG") -> bytes:
    """A small smooth random image, different for every seed."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((60 + seed % 7, 40 + seed % 5))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write_images(folder: Path, count: int, *, corrupt: bool = True) -> list[str]:
    """``count`` JPEGs and PNGs (plus the corrupt files) in ``folder``; returns the keys."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(count):
        key = f"img{i:03d}.jpg" if i % 2 else f"img{i:03d}.png"
        (folder / key).write_bytes(image_bytes(i, "JPEG" if i % 2 else "PNG"))
        keys.append(key)
    if corrupt:
        for key, data in CORRUPT_FILES.items():
            (folder / key).write_bytes(data)
            keys.append(key)
    return sorted(keys)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A database of its own for this module, migrated to head."""
    from db_fixtures import migrated_database

    return migrated_database(request, tmp_path_factory)


@pytest.fixture
def settings(pipeline_database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=pipeline_database_url,
        inference_threads=1,
        classify_batch_size=4,
        task_max_retries=2,
    )


@pytest.fixture(scope="session")
def classifier() -> Classifier:
    # One thread: a model may be training on the same two cores.
    return Classifier(num_threads=1)


@pytest.fixture
def runtime(settings: Settings, classifier: Classifier) -> Iterator[Runtime]:
    rt = Runtime(settings, classifier=classifier)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def make_images() -> Callable[..., list[str]]:
    """``make_images(folder, count, corrupt=True)``: see `write_images`."""
    return write_images


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An empty folder that becomes a LocalStore (and so a bucket) of its own."""
    path = tmp_path / "images"
    path.mkdir()
    return path
