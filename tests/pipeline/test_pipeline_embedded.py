"""`deepscreen run FOLDER` end to end: a real subprocess, SQLite, the filesystem queue
and the in-process Celery worker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from model_variants import model_variant
from pipeline_helpers import clean_env, deepscreen
from sqlalchemy import Engine, select

from deepscreen.commands.ingest import ingest
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.models import Image, ImageStatus, Prediction
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.faces import FaceStage
from deepscreen.storage import LocalStore

Images = Callable[[int], dict[str, bytes]]


@pytest.fixture
def folder(tmp_path: Path, sample_images: Images) -> Path:
    """12 images, 3 corrupt files and a text file."""
    path = tmp_path / "photos"
    path.mkdir()
    for name, data in sample_images(12).items():
        (path / name).write_bytes(data)
    (path / "notes.txt").write_text("not an image")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", inference_threads=1)


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return clean_env(data_dir=settings.data_dir, inference_threads=1)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    yield engine
    engine.dispose()


def results(engine: Engine) -> tuple[list[Image], list[Prediction]]:
    with session_scope(make_session_factory(engine)) as session:
        images = list(session.scalars(select(Image).order_by(Image.key)))
        predictions = list(session.scalars(select(Prediction).order_by(Prediction.id)))
    return images, predictions


def test_run_classifies_a_folder_once_and_reports_where_the_results_are(
    folder: Path, settings: Settings, env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    # When a folder is run for the first time
    first = deepscreen("run", str(folder), env=env, cwd=tmp_path)
    # Then it exits 0, every image has a verdict, and the output says where they are
    assert first.returncode == 0, first.stdout + first.stderr
    database = settings.data_dir / "deepscreen.sqlite3"
    assert f"results: {database}" in first.stdout
    assert "15 new, 0 already known, 1 skipped by suffix" in first.stdout
    assert "15 images: 12 done" in first.stdout and ", 3 failed" in first.stdout
    assert "corrupt.jpg" in first.stdout and "undecodable: " in first.stdout
    images, predictions = results(engine)
    assert len(images) == 15
    failed = {i.key: i.failure_reason for i in images if i.status is ImageStatus.FAILED}
    assert sorted(failed) == ["corrupt.jpg", "halfway.jpg", "truncated.png"]
    assert all(reason.startswith("undecodable: ") for reason in failed.values())
    done = [i for i in images if i.status is ImageStatus.DONE]
    assert len(done) == 12
    assert sorted(p.image_id for p in predictions) == sorted(i.id for i in done)

    # When it is run again on the same folder
    second = deepscreen("run", str(folder), env=env, cwd=tmp_path)
    # Then nothing is classified twice
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 new, 15 already known" in second.stdout
    assert "15 images: 12 done" in second.stdout
    images_again, predictions_again = results(engine)
    assert [(p.id, p.created_at) for p in predictions_again] == [
        (p.id, p.created_at) for p in predictions
    ]
    assert {i.attempts for i in images_again} == {1}


def test_run_resumes_images_an_interrupted_run_left_queued(
    folder: Path, settings: Settings, env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    # Given images registered by a run that died before sending any message
    migrate.upgrade(settings)
    summary = ingest(
        LocalStore(folder),
        settings=settings,
        session_factory=make_session_factory(engine),
        enqueue=lambda ids: 0,
    )
    assert summary.new == 15
    # When the folder is run
    proc = deepscreen("run", str(folder), env=env, cwd=tmp_path)
    # Then those images are classified all the same
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 new, 15 already known" in proc.stdout
    images, predictions = results(engine)
    assert sorted(i.status.value for i in images) == ["done"] * 12 + ["failed"] * 3
    assert len(predictions) == 12


def test_run_refuses_a_missing_folder(tmp_path: Path, env: dict[str, str]) -> None:
    proc = deepscreen("run", str(tmp_path / "nowhere"), env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no such folder" in proc.stderr


def test_run_with_a_face_model_reports_no_face_images_as_done(
    tmp_path: Path, settings: Settings, engine: Engine
) -> None:
    # Given a folder of five generated images without a face, a corrupt file, and a model
    # with a face stage as DEEPSCREEN_MODEL_DIR
    from sample_images import CORRUPT_FILES, no_face_images

    folder = tmp_path / "no-faces"
    folder.mkdir()
    files = {**no_face_images(), "corrupt.jpg": CORRUPT_FILES["corrupt.jpg"]}
    del files["pixel.png"]
    for name, data in files.items():
        (folder / name).write_bytes(data)
    model = model_variant(tmp_path / "face-model", pad=96, face_stage=FaceStage())
    env = clean_env(data_dir=settings.data_dir, inference_threads=1, model_dir=model)
    # When the folder is run
    run = deepscreen("run", str(folder), env=env, cwd=tmp_path)
    # Then the five are done with no_face and 0 faces, and the summary counts them
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 images: 5 done (0 real, 0 fake, 5 no_face), 1 failed" in run.stdout, run.stdout
    lines = [line.split() for line in run.stdout.splitlines()]
    rows = {cells[0]: cells for cells in lines if cells and cells[0] in files}
    del rows["corrupt.jpg"]
    assert len(rows) == 5
    assert {tuple(cells[1:5]) for cells in rows.values()} == {("done", "-", "no_face", "0")}
    assert all(" ".join(cells[5:]).startswith("no face of at least") for cells in rows.values())
    # And the database has their no_face predictions, with no score
    images, predictions = results(engine)
    assert sum(i.status is ImageStatus.DONE for i in images) == 5
    assert [(p.label, p.score, p.faces) for p in predictions] == [("no_face", None, [])] * 5
