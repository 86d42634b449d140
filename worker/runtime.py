"""What one worker process holds: database engine, stores, the classifier and its model row.

Everything is built on first use, in the process that uses it. A prefork worker
forks its children before any task runs, so each child opens its own database
connections and loads its own LiteRT interpreter after the fork; if the parent
did build something, a child notices the new process id and starts afresh.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from botocore.client import BaseClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.inference import MODEL_FILE, Classifier
from deepscreen.storage import ImageStore, make_s3_client, open_store, store_for_bucket

logger = logging.getLogger(__name__)

#: Threads per process that fetch (and decode) a batch's images concurrently.
FETCH_THREADS = 8


class Runtime:
    """Lazily built, process-local resources of the worker tasks.

    ``classifier`` may be passed in already loaded (the embedded mode validates the
    model before it starts, tests share one). The classifier is not thread-safe:
    hold `inference_lock` around inference (decoding is safe from any thread).
    """

    def __init__(self, settings: Settings, *, classifier: Classifier | None = None) -> None:
        self.settings = settings
        self.inference_lock = threading.Lock()
        self._lock = threading.Lock()
        self._given_classifier = classifier
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._classifier: Classifier | None = self._given_classifier
        self._engine: Engine | None = None
        self._session_factory: sessionmaker[Session] | None = None
        self._s3_client: BaseClient | None = None
        self._stores: dict[str, ImageStore] = {}
        self._model_version_id: int | None = None
        self._fetch_pool: ThreadPoolExecutor | None = None

    def _check_process(self) -> None:
        """After a fork, forget the parent's resources (without closing them)."""
        if os.getpid() == self._pid:
            return
        if self._engine is not None:
            # The parent's pooled connections belong to the parent.
            self._engine.dispose(close=False)
        self._given_classifier = None
        self._reset()

    @property
    def classifier(self) -> Classifier:
        """The model, loaded once per process with ``settings.inference_threads`` threads."""
        with self._lock:
            self._check_process()
            if self._classifier is None:
                s = self.settings
                self._classifier = Classifier(
                    s.model_dir,
                    num_threads=s.inference_threads,
                    max_batch=s.classify_batch_size,
                    max_bytes=s.max_image_bytes,
                    max_pixels=s.max_image_pixels,
                )
            return self._classifier

    @property
    def session_factory(self) -> sessionmaker[Session]:
        with self._lock:
            self._check_process()
            if self._session_factory is None:
                self._engine = make_engine(self.settings)
                self._session_factory = make_session_factory(self._engine)
            return self._session_factory

    @property
    def fetch_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            self._check_process()
            if self._fetch_pool is None:
                self._fetch_pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
            return self._fetch_pool

    @property
    def model_version_id(self) -> int:
        """The ``model_versions`` id of the loaded model, registering the model if new."""
        classifier = self.classifier
        with self._lock:
            if self._model_version_id is not None:
                return self._model_version_id
        with session_scope(self.session_factory) as session:
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
        with self._lock:
            self._model_version_id = version_id
        return version_id

    def store(self, bucket: str) -> ImageStore:
        """The store an ``images.bucket`` value names (one per bucket, S3 client shared)."""
        with self._lock:
            self._check_process()
            store = self._stores.get(bucket)
            if store is None:
                client = None if bucket.startswith("file://") else self._s3()
                store = self._stores[bucket] = store_for_bucket(
                    bucket, self.settings, client=client
                )
            return store

    def open(self, url: str) -> ImageStore:
        """A store for an ``s3://bucket/prefix`` or ``file:///path`` URL."""
        with self._lock:
            self._check_process()
            client = self._s3() if urlsplit(url).scheme == "s3" else None
        return open_store(url, self.settings, client=client)

    def _s3(self) -> BaseClient:
        if self._s3_client is None:
            self._s3_client = make_s3_client(self.settings)
        return self._s3_client

    def close(self) -> None:
        """Release connections and threads (the classifier stays loaded)."""
        with self._lock:
            if self._fetch_pool is not None:
                self._fetch_pool.shutdown(wait=True)
            if self._engine is not None and os.getpid() == self._pid:
                self._engine.dispose()
            classifier = self._classifier
            self._reset()
            self._classifier = classifier
