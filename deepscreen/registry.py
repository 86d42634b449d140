"""The model registry: artefacts under ``models/<sha256>/`` in a store, a
``model_versions`` row per model, and its lifecycle (candidate, active, retired,
shadow).

`publish` uploads a model folder (``model.tflite``, ``model_card.json``, report,
plots, Keras weights) and registers it as a candidate; `activate` makes one version
the active one (promotion and rollback are the same move); `fetch` gives a worker a
verified local copy of a version, checking the ``.tflite`` against the sha256 that
names it. No TensorFlow and no LiteRT here: training and workers both use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from deepscreen.config import Settings
from deepscreen.db.models import ModelStatus, ModelVersion
from deepscreen.errors import ModelError
from deepscreen.storage import ImageStore, open_store

MODEL_FILE = "model.tflite"
CARD_FILE = "model_card.json"
#: Folder of each version inside the registry store.
PREFIX = "models/"

logger = logging.getLogger(__name__)


def registry_url(settings: Settings) -> str:
    """Where artefacts live: ``settings.model_registry_url``, else a folder in the data dir."""
    if settings.model_registry_url:
        return settings.model_registry_url.rstrip("/") + "/"
    return (settings.data_dir / "registry").absolute().as_uri() + "/"


def registry_store(settings: Settings) -> ImageStore:
    url = registry_url(settings)
    if url.startswith("file://"):
        Path(url.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return open_store(url, settings)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def publish(
    model_dir: Path,
    *,
    settings: Settings,
    session: Session,
    gate_report: dict[str, Any] | None = None,
    store: ImageStore | None = None,
) -> ModelVersion:
    """Upload every file of ``model_dir`` to ``models/<sha256>/`` and register the model
    as a candidate (an already registered model keeps its row and status)."""
    tflite = model_dir / MODEL_FILE
    if not tflite.is_file() or not (model_dir / CARD_FILE).is_file():
        raise ModelError(f"{model_dir}: needs {MODEL_FILE} and {CARD_FILE}")
    sha = sha256_of(tflite)
    card = json.loads((model_dir / CARD_FILE).read_text())
    store = store or registry_store(settings)
    prefix = f"{store.prefix if hasattr(store, 'prefix') else ''}{PREFIX}{sha}/"
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        store.put(prefix + path.name, path.read_bytes())
    location = registry_url(settings) + f"{PREFIX}{sha}/"
    version = session.scalar(select(ModelVersion).where(ModelVersion.sha256 == sha))
    if version is None:
        version = ModelVersion(
            sha256=sha,
            name=str(card.get("name", "deepscreen-model")),
            location=location,
            card=card,
            active=False,
            status=ModelStatus.CANDIDATE,
            gate_report=gate_report,
        )
        session.add(version)
    else:
        version.location = location
        if gate_report is not None:
            version.gate_report = gate_report
    session.flush()
    logger.info("registry: published %s as version %d", sha[:12], version.id)
    return version


def activate(session: Session, version_id: int, *, now: datetime | None = None) -> int | None:
    """Make ``version_id`` the active model (promotion or rollback); the previous active
    one is retired. Returns the previous active version id. The caller commits."""
    target = session.get(ModelVersion, version_id, with_for_update=True)
    if target is None:
        raise ModelError(f"no model version {version_id}")
    previous = session.scalar(
        select(ModelVersion.id).where(ModelVersion.active.is_(True)).with_for_update()
    )
    if previous == version_id:
        return previous
    # Two statements: the partial unique index allows one active row at any moment.
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.active.is_(True))
        .values(active=False, status=ModelStatus.RETIRED)
    )
    session.flush()
    target.active, target.status, target.shadow = True, ModelStatus.ACTIVE, False
    session.flush()
    return previous


def set_shadow(session: Session, version_id: int, on: bool) -> None:
    """Run (or stop running) ``version_id`` in shadow next to the active model; at most
    one version is in shadow. The caller commits."""
    target = session.get(ModelVersion, version_id)
    if target is None:
        raise ModelError(f"no model version {version_id}")
    if on and target.active:
        raise ModelError("the active model cannot also run in shadow")
    session.execute(update(ModelVersion).where(ModelVersion.shadow.is_(True)).values(shadow=False))
    target.shadow = on
    session.flush()


def fetch(version: ModelVersion, *, settings: Settings, cache_dir: Path | None = None) -> Path:
    """A local folder with ``version``'s model and card, its sha256 verified.

    Local locations (a folder or the path of a ``.tflite``) are used in place after
    the check; store locations are downloaded once into ``cache_dir`` (default
    ``<data_dir>/models``) through a temporary folder renamed into place, so a
    half-downloaded model is never loaded.
    """
    location = version.location
    if "://" not in location or location.startswith("file://"):
        path = Path(location.removeprefix("file://"))
        folder = path.parent if path.name == MODEL_FILE else path
        _verify(folder, version.sha256)
        return folder
    cache = (cache_dir or settings.data_dir / "models") / version.sha256
    if (cache / MODEL_FILE).is_file():
        _verify(cache, version.sha256)
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(location, settings)
    with tempfile.TemporaryDirectory(dir=cache.parent, prefix=".download-") as tmp:
        stage = Path(tmp)
        for obj in store.list(prefix=getattr(store, "prefix", "")):
            name = obj.key.rsplit("/", 1)[-1]
            (stage / name).write_bytes(store.get(obj.key))
        _verify(stage, version.sha256)
        try:
            os.rename(stage, cache)
        except OSError:  # another process won the race: its copy is verified too
            shutil.rmtree(stage, ignore_errors=True)
    _verify(cache, version.sha256)
    return cache


def _verify(folder: Path, sha256: str) -> None:
    tflite = folder / MODEL_FILE
    if not tflite.is_file() or not (folder / CARD_FILE).is_file():
        raise ModelError(f"model {sha256[:12]}: {folder} lacks {MODEL_FILE} or {CARD_FILE}")
    actual = sha256_of(tflite)
    if actual != sha256:
        raise ModelError(
            f"model {sha256[:12]}: {tflite} has sha256 {actual[:12]}, refusing to load it"
        )
