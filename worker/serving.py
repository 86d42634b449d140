"""Which models a worker process serves, and the hot reload that follows the registry.

Before each batch the worker asks `ModelSet.current` for a `Serving`: the active
model and, if a candidate runs in shadow, that one too. At most once per
``check_interval`` seconds this reads the active and shadow versions (one small
query); when they differ from the loaded ones, the new version is fetched from the
registry (its ``.tflite`` checked against its sha256), loaded with the same settings
and swapped in as one new `Serving`. A batch keeps the `Serving` it started with, so
its predictions and verdicts record the version that produced them; the old
classifier lives until the last batch holding it ends.

A version that cannot be fetched, verified or loaded is logged as an error and left
alone for `RETRY_REFUSED` seconds while the worker keeps serving what it has. With
no active version at all, the packaged (``settings.model_dir``) model is registered
and becomes the active one, as on a fresh install.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from deepscreen import registry
from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.models import ModelVersion
from deepscreen.db.queries import ServedVersion
from deepscreen.db.session import session_scope
from deepscreen.errors import DeepscreenError
from deepscreen.inference import MODEL_FILE, Classifier

logger = logging.getLogger(__name__)

#: Longest a batch may be served by a version that is no longer the active one.
CHECK_INTERVAL = 1.0
#: Seconds before a version that failed to load is tried again.
RETRY_REFUSED = 60.0


@dataclass(frozen=True)
class ServedModel:
    """A loaded classifier and the ``model_versions`` id its predictions carry."""

    version_id: int
    classifier: Classifier

    @property
    def sha256(self) -> str:
        return self.classifier.version


@dataclass(frozen=True)
class Serving:
    """What one batch uses from start to end."""

    active: ServedModel
    #: A candidate scored on the same images; its predictions are stored, never used.
    shadow: ServedModel | None = None

    @property
    def shadow_shares_inputs(self) -> bool:
        """Whether the shadow model takes the very inputs prepared for the active one
        (same preprocessing, face stage and input size); else it prepares its own."""
        if self.shadow is None:
            return False
        return same_inputs(self.active.classifier, self.shadow.classifier)


def same_inputs(a: Classifier, b: Classifier) -> bool:
    """Whether ``a.prepare`` and ``b.prepare`` cut the same inputs from any image."""
    return (
        a.preprocessing == b.preprocessing
        and a.face_stage == b.face_stage
        and a.input_size == b.input_size
        and (a.max_bytes, a.max_pixels) == (b.max_bytes, b.max_pixels)
    )


def load_classifier(model_dir: Path, settings: Settings) -> Classifier:
    """A classifier over ``model_dir`` with the worker's inference settings."""
    return Classifier(
        model_dir,
        num_threads=settings.inference_threads,
        max_batch=settings.classify_batch_size,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
    )


def _short(model: ServedModel | None) -> str:
    return "none" if model is None else f"{model.sha256[:12]} (version {model.version_id})"


class ModelSet:
    """The models of one process: loaded lazily, reloaded when the registry changes.

    ``fallback`` is the model served when no version is active (or the active one
    cannot be loaded at start); by default ``settings.model_dir``, loaded on demand.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        fallback: Classifier | None = None,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.settings = settings
        self.check_interval = check_interval
        self._fallback = fallback
        self._fallback_lock = threading.Lock()
        # Held while checking and loading, so one thread reloads and others wait for it.
        self._reload_lock = threading.Lock()
        self._serving: Serving | None = None
        self._checked_at = float("-inf")
        #: sha256 -> monotonic time until which a version that failed is not retried.
        self._refused: dict[str, float] = {}

    @property
    def loaded(self) -> Serving | None:
        """What the last check settled on (None before the first batch)."""
        return self._serving

    def classifier(self) -> Classifier:
        """The active classifier if one was loaded, else the fallback (no database)."""
        serving = self._serving
        return serving.active.classifier if serving is not None else self.fallback()

    def fallback(self) -> Classifier:
        with self._fallback_lock:
            if self._fallback is None:
                self._fallback = load_classifier(self.settings.model_dir, self.settings)
            return self._fallback

    def current(self, session_factory: sessionmaker[Session]) -> Serving:
        """The models for the next batch, reloaded first if the registry changed."""
        serving = self._serving
        if serving is not None and time.monotonic() - self._checked_at < self.check_interval:
            return serving
        with self._reload_lock:
            serving = self._serving
            if serving is not None and time.monotonic() - self._checked_at < self.check_interval:
                return serving  # another thread has just checked
            with session_scope(session_factory) as session:
                active, shadow = queries.get_served_model_versions(session=session)
            new = self._resolve(active, shadow, session_factory)
            self._checked_at = time.monotonic()
            if serving is None or new.active != serving.active:
                logger.info(
                    "serving model %s, was %s",
                    _short(new.active),
                    _short(serving.active if serving else None),
                )
            if new.shadow != (serving.shadow if serving else None):
                logger.info(
                    "shadow model %s, was %s",
                    _short(new.shadow),
                    _short(serving.shadow if serving else None),
                )
            # One assignment: a batch sees the old pair or the new one, never a mix.
            self._serving = new
            return new

    def _resolve(
        self,
        active: ServedVersion | None,
        shadow: ServedVersion | None,
        session_factory: sessionmaker[Session],
    ) -> Serving:
        current = self._serving
        served = self._active(active, current, session_factory)
        return Serving(served, self._shadow(shadow, served, current))

    def _active(
        self,
        wanted: ServedVersion | None,
        current: Serving | None,
        session_factory: sessionmaker[Session],
    ) -> ServedModel:
        if current is not None and (wanted is None or wanted.id == current.active.version_id):
            return current.active
        if wanted is not None:
            classifier = self._load(wanted, current)
            if classifier is not None:
                return ServedModel(wanted.id, classifier)
            if current is not None:
                return current.active
        return self._register_fallback(session_factory)

    def _shadow(
        self, wanted: ServedVersion | None, active: ServedModel, current: Serving | None
    ) -> ServedModel | None:
        if wanted is None or wanted.id == active.version_id:
            return None
        if current is not None and current.shadow and current.shadow.version_id == wanted.id:
            classifier: Classifier | None = current.shadow.classifier
        else:
            classifier = self._load(wanted, current)
        if classifier is None:
            return None
        return ServedModel(wanted.id, classifier)

    def _load(self, wanted: ServedVersion, current: Serving | None) -> Classifier | None:
        """``wanted``'s classifier: one already loaded, or fetched, verified and loaded."""
        loaded = [self._fallback]
        if current is not None:
            loaded.append(current.active.classifier)
            if current.shadow is not None:  # a promoted shadow model is already loaded
                loaded.append(current.shadow.classifier)
        for classifier in loaded:
            if classifier is not None and classifier.version == wanted.sha256:
                return classifier
        if self._refused.get(wanted.sha256, float("-inf")) > time.monotonic():
            return None
        ref = ModelVersion(id=wanted.id, sha256=wanted.sha256, location=wanted.location)
        try:
            folder = registry.fetch(ref, settings=self.settings)
            classifier = load_classifier(folder, self.settings)
            if classifier.version != wanted.sha256:  # fetch checked it; a race would show here
                raise DeepscreenError(f"{folder} holds model {classifier.version[:12]}")
        except (DeepscreenError, OSError) as exc:
            self._refused[wanted.sha256] = time.monotonic() + RETRY_REFUSED
            logger.error(
                "cannot load model version %d (%s), keeping the current model %s: %s",
                wanted.id,
                wanted.sha256[:12],
                _short(current.active if current else None),
                exc,
            )
            return None
        self._refused.pop(wanted.sha256, None)
        return classifier

    def _register_fallback(self, session_factory: sessionmaker[Session]) -> ServedModel:
        """Serve the packaged model; it becomes the active version if none is."""
        classifier = self.fallback()
        with session_scope(session_factory) as session:
            version = queries.ensure_model_version(
                session=session,
                sha256=classifier.version,
                name=str(classifier.card.get("name", classifier.model_dir.name)),
                location=str(classifier.model_dir / MODEL_FILE),
                card=classifier.card,
            )
            version_id, active = version.id, version.active
        if not active:
            logger.warning(
                "serving model %s, which is not the active model version",
                classifier.version[:12],
            )
        return ServedModel(version_id, classifier)
