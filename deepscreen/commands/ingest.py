"""`deepscreen ingest URL...`: register a bucket's or folder's images and queue them.

`ingest` is the plain function behind both this command and the periodic scan
task: list the store, register objects not seen before (dedupe on bucket, key and
etag), commit, and only then enqueue classify batches by task name. Running it
again registers and queues nothing new; an interrupted run can simply be run
again (images registered but never enqueued are picked up by the reconciler).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.models import ImageSource
from deepscreen.db.session import session_scope
from deepscreen.errors import PermanentError, TransientError
from deepscreen.storage import ImageStore, ObjectInfo, match_suffix

#: Objects registered per transaction (then committed and enqueued).
REGISTER_CHUNK = 512

#: Exit status for usage errors (argparse's), and for failures worth retrying.
USAGE_ERROR = 2
TRY_AGAIN = 1


@dataclass
class IngestSummary:
    """What one ingestion found and did."""

    location: str
    #: Newly registered images.
    new: int = 0
    #: Images already registered (same bucket, key and etag).
    known: int = 0
    #: Objects whose name does not end with an image suffix.
    skipped: int = 0
    #: Classify tasks sent.
    tasks: int = 0

    def counts(self) -> dict[str, int]:
        return {"new": self.new, "known": self.known, "skipped": self.skipped, "tasks": self.tasks}

    def __str__(self) -> str:
        return (
            f"{self.location}: {self.new} new, {self.known} already known, "
            f"{self.skipped} skipped by suffix; {self.tasks} classify tasks queued"
        )


def ingest(
    store: ImageStore,
    *,
    settings: Settings,
    session_factory: sessionmaker[Session],
    enqueue: Callable[[Sequence[int]], int],
    source: ImageSource = ImageSource.SCAN,
    on_object: Callable[[ObjectInfo], None] | None = None,
) -> IngestSummary:
    """Register ``store``'s image objects under its prefix and enqueue the new ones.

    ``enqueue(ids)`` sends classify tasks for committed images and returns how
    many; it is called with full batches of ``settings.classify_batch_size`` as
    registration goes and once more with the remainder. ``on_object`` sees every
    listed object (progress, or collecting the listing). Memory stays bounded by
    one chunk, however large the bucket.
    """
    summary = IngestSummary(location=_describe(store))
    suffixes = settings.image_suffixes or None
    batch = settings.classify_batch_size
    pending: list[int] = []
    chunk: list[ObjectInfo] = []

    def register() -> None:
        with session_scope(session_factory) as session:
            new_ids = queries.register_images(session=session, objects=chunk, source=source)
        # Committed: from here on a worker finds every row it is sent.
        summary.new += len(new_ids)
        summary.known += len(chunk) - len(new_ids)
        pending.extend(new_ids)
        chunk.clear()
        full = len(pending) - len(pending) % batch
        if full:
            summary.tasks += enqueue(pending[:full])
            del pending[:full]

    for obj in store.list():
        if on_object is not None:
            on_object(obj)
        if not match_suffix(obj.key, suffixes):
            summary.skipped += 1
            continue
        chunk.append(obj)
        if len(chunk) >= REGISTER_CHUNK:
            register()
    if chunk:
        register()
    if pending:
        summary.tasks += enqueue(pending)
    return summary


def location_url(location: str) -> str:
    """``s3://`` and ``file://`` URLs as they are; a plain path becomes a ``file://`` URL."""
    if urlsplit(location).scheme in ("s3", "file"):
        return location
    return Path(location).expanduser().resolve().as_uri()


def _describe(store: ImageStore) -> str:
    if store.bucket.startswith("file://"):
        return store.bucket + ("/" + store.prefix if store.prefix else "")
    return f"s3://{store.bucket}/{store.prefix}"


# -------------------------------------------------------------------- command


def register(subparsers: Any) -> None:
    """Add the ``ingest`` subcommand to the ``deepscreen`` script."""
    parser = subparsers.add_parser(
        "ingest",
        help="register the images of a bucket or folder and queue them for classification",
        description="List s3://bucket/prefix, file:///path or a plain folder path, register "
        "objects not seen before (by bucket, key and etag) in DEEPSCREEN_DATABASE_URL and "
        "send classify tasks to DEEPSCREEN_BROKER_URL. Safe to run again.",
    )
    parser.add_argument("locations", nargs="+", metavar="URL", help="s3://, file:// or a path")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: when stderr is a terminal)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Ingest every location in turn; print one summary line per location."""
    from tqdm import tqdm

    from deepscreen.db.session import make_engine, make_session_factory
    from deepscreen.storage import open_store
    from deepscreen.taskqueue import create_celery, enqueue_classify

    settings = Settings.from_env()
    app = create_celery(settings)
    engine = make_engine(settings)
    factory = make_session_factory(engine)

    def enqueue(ids: Sequence[int]) -> int:
        return enqueue_classify(app, ids, batch_size=settings.classify_batch_size)

    status = 0
    try:
        for location in args.locations:
            try:
                store = open_store(location_url(location), settings)
                disable = None if args.progress is None else not args.progress
                with tqdm(unit="obj", file=sys.stderr, disable=disable, leave=False) as bar:
                    summary = ingest(
                        store,
                        settings=settings,
                        session_factory=factory,
                        enqueue=enqueue,
                        on_object=lambda _obj: bar.update(),
                    )
            except (ValueError, PermanentError) as exc:
                print(f"deepscreen ingest: error: {location}: {exc}", file=sys.stderr)
                status = max(status, USAGE_ERROR)
                continue
            except TransientError as exc:
                print(
                    f"deepscreen ingest: {location}: {exc} (nothing is lost: run it again)",
                    file=sys.stderr,
                )
                status = max(status, TRY_AGAIN)
                continue
            print(f"ingest {summary}")
    finally:
        app.close()
        engine.dispose()
    return status
