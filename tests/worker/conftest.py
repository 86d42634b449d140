"""Fixtures for the pipeline functions: a fresh database per module on both backends,
a runtime over it with the default model, and folders of generated images.

Each module gets its own database because these tests commit (the pipeline opens
its own transactions) and register a model version as active; each test uses its
own folder, hence its own bucket, so tests in a module never see each other's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from model_variants import whole_image_model
from sample_images import CORRUPT_FILES, generated_images

from deepscreen.config import Settings
from deepscreen.inference import Classifier
from worker.runtime import Runtime


def write_images(folder: Path, count: int, *, corrupt: bool = True) -> list[str]:
    """``count`` JPEGs and PNGs (plus the corrupt files) in ``folder``; returns the keys."""
    folder.mkdir(parents=True, exist_ok=True)
    files = generated_images(count)
    if corrupt:
        files.update(CORRUPT_FILES)
    for key, data in files.items():
        (folder / key).write_bytes(data)
    return sorted(files)


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
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The packaged model as a whole-image classifier: generated images have no faces
    (the face stage's path through the worker: test_worker_faces.py)."""
    # One thread: a model may be training on the same two cores.
    return Classifier(whole_image_model(tmp_path_factory.mktemp("whole")), num_threads=1)


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
