"""The model registry: publish to a store, fetch with the sha256 checked, promote,
roll back, shadow; on a folder store and on a real SeaweedFS."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from deepscreen.config import Settings
from deepscreen.db.models import ModelStatus, ModelVersion
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.errors import ModelError
from deepscreen.inference import default_model_dir
from deepscreen.registry import activate, fetch, publish, set_shadow, sha256_of

MODEL_FILES = ("model.tflite", "model_card.json", "report.md")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "candidate"
    folder.mkdir()
    for name in MODEL_FILES:
        shutil.copy(default_model_dir() / name, folder / name)
    return folder


def registry_settings(request: pytest.FixtureRequest, tmp_path: Path, db_url: str) -> Settings:
    if request.param == "folder":
        return Settings(data_dir=tmp_path / "data", database_url=db_url)
    s3: Any = request.getfixturevalue("seaweedfs")
    import secrets

    from deepscreen.storage import make_s3_client

    bucket = f"registry-{secrets.token_hex(4)}"
    settings = s3.settings(data_dir=tmp_path / "data", database_url=db_url)
    make_s3_client(settings).create_bucket(Bucket=bucket)
    return s3.settings(
        data_dir=tmp_path / "data", database_url=db_url, model_registry_url=f"s3://{bucket}/"
    )


@pytest.fixture(params=["folder", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Settings:
    return registry_settings(request, tmp_path, database_url)


@pytest.fixture
def session(settings: Settings) -> Any:
    engine = make_engine(settings)
    with session_scope(make_session_factory(engine)) as s:
        yield s
        s.rollback()
    engine.dispose()


def test_publish_uploads_and_fetch_returns_a_verified_copy(
    settings: Settings, model_dir: Path, session: Session, tmp_path: Path
) -> None:
    version = publish(model_dir, settings=settings, session=session)
    assert version.status is ModelStatus.CANDIDATE and not version.active
    assert version.sha256 == sha256_of(model_dir / "model.tflite")
    assert f"models/{version.sha256}/" in version.location
    local = fetch(version, settings=settings, cache_dir=tmp_path / "cache")
    assert sha256_of(local / "model.tflite") == version.sha256
    assert sorted(p.name for p in local.iterdir()) == sorted(MODEL_FILES)
    # Publishing the same model again keeps its row
    assert publish(model_dir, settings=settings, session=session).id == version.id


def test_a_tampered_artefact_is_refused(
    settings: Settings, model_dir: Path, session: Session, tmp_path: Path
) -> None:
    version = publish(model_dir, settings=settings, session=session)
    version.sha256 = "0" * 64  # the row names another model than the bytes are
    with pytest.raises(ModelError, match="refusing to load it"):
        fetch(version, settings=settings, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / ("0" * 64)).exists()


def test_promote_then_roll_back(settings: Settings, model_dir: Path, session: Session) -> None:
    old = ModelVersion(
        sha256="1" * 64, name="old", location="-", card={}, active=True, status=ModelStatus.ACTIVE
    )
    session.add(old)
    session.flush()
    new = publish(model_dir, settings=settings, session=session)
    # Promotion retires the active model
    assert activate(session, new.id) == old.id
    session.refresh(old)
    assert (new.active, new.status, old.active, old.status) == (
        True,
        ModelStatus.ACTIVE,
        False,
        ModelStatus.RETIRED,
    )
    # Rollback is the same move back
    assert activate(session, old.id) == new.id
    actives = session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).all()
    assert [v.id for v in actives] == [old.id]
    # At most one shadow, never the active one
    set_shadow(session, new.id, True)
    assert new.shadow
    with pytest.raises(ModelError):
        set_shadow(session, old.id, True)
