"""What one worker process holds: database engine, stores, the served models.

Everything is built on first use, in the process that uses it. A prefork worker
forks its children before any task runs, so each child opens its own database
connections and loads its own LiteRT interpreter after the fork; if the parent
did build something, a child notices the new process id and starts afresh. Each
process follows the registry's active (and shadow) model version on its own, before
each batch (`worker.serving`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from botocore.client import BaseClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.db.session import make_engine, make_session_factory
from deepscreen.inference import Classifier, PreparedImage
from deepscreen.storage import ImageStore, make_s3_client, open_store, store_for_bucket
from worker.serving import CHECK_INTERVAL, ModelSet, Serving

#: Threads per process that fetch (and decode) a batch's images concurrently.
FETCH_THREADS = 8


class Runtime:
    """Lazily built, process-local resources of the worker tasks.

    ``classifier`` may be passed in already loaded (tests share one): it is the model
    served while no version is active, as ``settings.model_dir`` is otherwise. The
    registry's active version replaces it as soon as a batch notices one, at most
    ``check_interval`` seconds after a change. Classifiers are not thread-safe:
    hold `inference_lock` around inference, and prepare images through `prepare`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        classifier: Classifier | None = None,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.settings = settings
        self.check_interval = check_interval
        self.inference_lock = threading.Lock()
        self._lock = threading.Lock()
        self._given_classifier = classifier
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._models = ModelSet(
            self.settings, fallback=self._given_classifier, check_interval=self.check_interval
        )
        self._engine: Engine | None = None
        self._session_factory: sessionmaker[Session] | None = None
        self._s3_client: BaseClient | None = None
        self._stores: dict[str, ImageStore] = {}
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

    def serving(self) -> Serving:
        """The models one batch uses from start to end, reloaded first if the active
        or shadow version changed (checked at most once per ``check_interval``)."""
        with self._lock:
            self._check_process()
            models = self._models
        return models.current(self.session_factory)

    @property
    def classifier(self) -> Classifier:
        """The active model as last loaded, or (before any batch) the fallback model,
        loaded with ``settings.inference_threads`` threads; needs no database."""
        with self._lock:
            self._check_process()
            models = self._models
        return models.classifier()

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

    def prepare(self, classifier: Classifier, data: bytes) -> PreparedImage:
        """``classifier.prepare(data)``, from any fetch thread: the classifier keeps one
        face detector per thread, so decoding and detection run in parallel."""
        return classifier.prepare(data)

    @property
    def model_version_id(self) -> int:
        """The ``model_versions`` id of the active model (see `serving`)."""
        return self.serving().active.version_id

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
        """Release connections and threads (the models stay loaded)."""
        with self._lock:
            if self._fetch_pool is not None:
                self._fetch_pool.shutdown(wait=True)
            if self._engine is not None and os.getpid() == self._pid:
                self._engine.dispose()
            models = self._models
            self._reset()
            self._models = models
