"""Classify a batch of images by id: the plain function behind the classify task.

One call takes the images through three short transactions with no transaction
open while bytes are fetched or inference runs:

1. claim: re-read the rows, skip the ones already decided, mark the rest processing;
2. fetch and decode them concurrently (threads), then run ONE batched inference;
3. write every prediction and every status change in one transaction.

Redelivery is harmless: predictions are unique per (image, model version) and
inserted with insert-or-ignore, and a decided image is skipped. The claim records
the task id (``images.claimed_by``): a redelivered or retried message keeps its id
and takes its images back, while an image another task claimed less than the hard
time limit ago is left to it (a micro-batch may have taken images a
``classify_batch`` message names: `worker.microbatch`). Corrupt,
unsupported and oversized images and missing objects fail with ``code: message``
and are never retried. Images whose fetch hit a transient error stay processing
and a `TransientError` is raised after the commit, so the task is retried for
them; on the last attempt they fail instead.

Each new verdict emits a ``verdict.created`` webhook event in the transaction that
writes it; its deliveries are enqueued after the commit (a redelivered batch writes
no verdict, so it emits nothing).

Each image is prepared by the model (`Classifier.prepare`: decoded and, for a model
with a face stage, one crop per face found) and scored as soon as it is ready. An
image in which the face stage finds no face gets a ``no_face`` prediction and
verdict (no score, a reason): it is done, not failed. Every face found is stored on
the prediction.

A batch is served by ONE `Serving` taken before the claim (the runtime reloads the
registry's active version first if it changed), so its predictions, verdicts and
events all name the version that produced them. "Already decided" means decided by
that active version: after a promotion, images the old version classified are not
queued again; only images classified from then on get the new version. A version
in shadow scores the same inputs after the active one when both cut them the same
way (`Serving.shadow_shares_inputs`), else it prepares each image itself in the
fetch thread; its predictions are stored in the same transaction, but it writes no
verdict and no event, and a failure of it is logged and never fails the batch.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from PIL import Image as PILImage
from sqlalchemy import null
from sqlalchemy.orm import Session

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageStatus
from deepscreen.db.session import session_scope
from deepscreen.errors import DeepscreenError, ImageError, PermanentError, TransientError
from deepscreen.inference import Classifier, PreparedImage
from deepscreen.inference import Prediction as ModelPrediction
from deepscreen.review import record_verdicts
from worker.events import emit_verdicts_created
from worker.runtime import Runtime
from worker.serving import Serving

logger = logging.getLogger(__name__)


def max_attempts(settings: Settings) -> int:
    """Times a worker may start on one image: the first try plus every retry."""
    return settings.task_max_retries + 1


def gave_up(attempts: int) -> str:
    return f"gave up after {attempts} attempts"


def failure_reason(exc: BaseException) -> str:
    """``code: message``, as stored in ``images.failure_reason``."""
    code = getattr(exc, "code", None) or type(exc).__name__
    return f"{code}: {exc}"


@dataclass
class BatchOutcome:
    """What one call did to each image id it was given."""

    classified: list[int] = field(default_factory=list)
    #: Image id -> ``code: message``.
    failed: dict[int, str] = field(default_factory=dict)
    #: Already decided (or unknown) ids, left as they were.
    skipped: list[int] = field(default_factory=list)
    #: Transient failures left processing for a retry.
    retry: list[int] = field(default_factory=list)
    #: Webhook deliveries of the ``verdict.created`` events this call emitted.
    deliveries: list[int] = field(default_factory=list)
    #: Every image the call looked at (the ids given, or the ones a micro-batch took).
    images: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "classified": len(self.classified),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "retry": len(self.retry),
        }


@dataclass(frozen=True)
class _Claimed:
    image_id: int
    bucket: str
    key: str
    attempts: int


@dataclass
class _Fetched:
    """One image after fetching and preparing, or the error that stopped it."""

    claimed: _Claimed
    sha256: str | None = None
    size: int | None = None
    #: The active model's inputs (and faces) for the image.
    prepared: PreparedImage | None = None
    #: The shadow model's own inputs, when it cannot share the active model's.
    shadow_prepared: PreparedImage | None = None
    error: DeepscreenError | None = None
    #: The active model's verdict and the milliseconds its inference took.
    prediction: ModelPrediction | None = None
    inference_ms: float = 0.0


def classify_batch(
    image_ids: Sequence[int],
    *,
    runtime: Runtime,
    final_attempt: bool = False,
    task_id: str = "-",
    enqueue_deliveries: Callable[[Sequence[int]], object] | None = None,
) -> BatchOutcome:
    """Classify the images ``image_ids`` that still need a verdict from this model.

    Raises `TransientError` (after committing everything else) when some images
    could not be fetched for a transient reason and this is not ``final_attempt``.
    Database errors surface as `DatabaseUnavailable`, also transient.
    ``enqueue_deliveries(ids)`` sends the webhook deliveries of the new verdicts
    after the commit; if it cannot, the webhook dispatcher sends them later.
    """

    def select_images(session: Session, outcome: BatchOutcome) -> list[Image]:
        images = queries.get_images_for_update(session=session, ids=image_ids)
        known = {image.id for image in images}
        outcome.images.extend(image_ids)
        outcome.skipped.extend(i for i in sorted(set(image_ids)) if i not in known)
        return images

    return classify_selected(
        select_images,
        runtime=runtime,
        final_attempt=final_attempt,
        task_id=task_id,
        enqueue_deliveries=enqueue_deliveries,
    )


#: Picks, inside the claim's transaction, the locked image rows a batch is about, and
#: records on the outcome the ids it looked at (`BatchOutcome.images`) and any it
#: leaves out (unknown ones, as skipped).
Selector = Callable[[Session, BatchOutcome], Sequence[Image]]


def classify_selected(
    select_images: Selector,
    *,
    runtime: Runtime,
    final_attempt: bool = False,
    task_id: str = "-",
    enqueue_deliveries: Callable[[Sequence[int]], object] | None = None,
    after_claim: Callable[[], object] | None = None,
) -> BatchOutcome:
    """`classify_batch` over the images ``select_images`` picks in the claim's
    transaction (by id, or whatever waits: `worker.microbatch`); ``after_claim()`` runs
    once the claim has committed, before the images are fetched."""
    outcome = BatchOutcome()
    serving = runtime.serving()
    claimed = _claim(select_images, runtime, serving.active.version_id, outcome, task_id)
    if after_claim is not None:
        after_claim()
    if claimed:
        fetched = _fetch_all(claimed, runtime, serving, task_id)
        _infer_and_record(fetched, runtime, serving, final_attempt, outcome, task_id)
    if outcome.deliveries and enqueue_deliveries is not None:
        try:
            enqueue_deliveries(outcome.deliveries)
        except TransientError as exc:
            logger.warning(
                "task %s: %d webhook deliveries left to the dispatcher: %s",
                task_id,
                len(outcome.deliveries),
                exc,
            )
    logger.info(
        "task %s: %d classified, %d failed, %d skipped, %d to retry (images %s)",
        task_id,
        len(outcome.classified),
        len(outcome.failed),
        len(outcome.skipped),
        len(outcome.retry),
        _ids(outcome.images),
    )
    if outcome.retry:
        raise TransientError(
            f"{len(outcome.retry)} images hit a transient error (images {_ids(outcome.retry)})"
        )
    return outcome


def held_elsewhere(image: Image, task_id: str, now: datetime, settings: Settings) -> bool:
    """Whether another task is working on ``image``: it claimed it less than the hard
    time limit ago (after that, the task has been killed). A redelivered or retried
    message keeps its task id, so it takes its own images back."""
    return (
        image.status is ImageStatus.PROCESSING
        and image.claimed_by is not None
        and image.claimed_by != task_id
        and image.started_at is not None
        and now - image.started_at < timedelta(seconds=settings.task_time_limit)
    )


def _claim(
    select_images: Selector,
    runtime: Runtime,
    version_id: int,
    outcome: BatchOutcome,
    task_id: str,
) -> list[_Claimed]:
    """Mark the images that need work processing; record the ones that do not."""
    limit = max_attempts(runtime.settings)
    claimed: list[_Claimed] = []
    now = utcnow()
    with session_scope(runtime.session_factory) as session:
        images = select_images(session, outcome)
        predicted = queries.predicted_image_ids(
            session=session, ids=[image.id for image in images], model_version_id=version_id
        )
        for image in images:
            if image.id in predicted:
                if image.status is not ImageStatus.DONE:
                    image.status, image.finished_at = ImageStatus.DONE, now
                outcome.skipped.append(image.id)
            elif image.status is ImageStatus.FAILED or held_elsewhere(
                image, task_id, now, runtime.settings
            ):
                outcome.skipped.append(image.id)
            elif image.attempts >= limit:
                reason = gave_up(image.attempts)
                _fail(image, reason, now)
                outcome.failed[image.id] = reason
                logger.warning("task %s image %d failed: %s", task_id, image.id, reason)
            else:
                image.status = ImageStatus.PROCESSING
                image.attempts += 1
                image.started_at = now
                image.claimed_by = task_id
                image.failure_reason = None
                claimed.append(_Claimed(image.id, image.bucket, image.key, image.attempts))
    return claimed


def _fetch_all(
    claimed: list[_Claimed], runtime: Runtime, serving: Serving, task_id: str
) -> list[_Fetched]:
    """Fetch and prepare every claimed image in threads, and score each one with the
    active model as soon as it is prepared: inference overlaps the store's latency
    for the rest of the batch (one image at a time is also LiteRT's fastest way on
    this CPU; an image's face crops go through the interpreter together). Results
    come back in the order of ``claimed``."""
    max_bytes = runtime.settings.max_image_bytes
    classifier = serving.active.classifier
    shadow = serving.shadow if serving.shadow and not serving.shadow_shares_inputs else None

    def fetch(item: _Claimed) -> _Fetched:
        result = _Fetched(item)
        try:
            data = runtime.store(item.bucket).get(item.key, max_bytes=max_bytes)
        except (PermanentError, TransientError) as exc:
            result.error = exc
            return result
        result.sha256 = hashlib.sha256(data).hexdigest()
        result.size = len(data)
        try:
            result.prepared = runtime.prepare(classifier, data)
        except ImageError as exc:  # a ModelError is not the image's fault: it fails the task
            result.error = exc
            return result
        if shadow is not None:
            try:
                result.shadow_prepared = runtime.prepare(shadow.classifier, data)
            except DeepscreenError as exc:  # the shadow never fails the image
                logger.warning(
                    "task %s image %d: shadow model %s cannot prepare it: %s",
                    task_id,
                    item.image_id,
                    shadow.sha256[:12],
                    exc,
                )
        return result

    futures = [runtime.fetch_pool.submit(fetch, item) for item in claimed]
    for future in as_completed(futures):
        result = future.result()
        if result.prepared is not None:
            with runtime.inference_lock:
                started = time.perf_counter()
                result.prediction = classifier.predict_prepared([result.prepared])[0]
                result.inference_ms = (time.perf_counter() - started) * 1000
    return [future.result() for future in futures]


def _infer_and_record(
    fetched: list[_Fetched],
    runtime: Runtime,
    serving: Serving,
    final_attempt: bool,
    outcome: BatchOutcome,
    task_id: str,
) -> None:
    classifier, version_id = serving.active.classifier, serving.active.version_id
    good = [f for f in fetched if f.prediction is not None]
    predictions: list[dict[str, object]] = []
    now = utcnow()
    if good:
        predictions = [
            prediction_row(
                f.claimed.image_id, version_id, classifier, f.prediction, f.inference_ms, now
            )
            for f in good
            if f.prediction is not None
        ]
        if serving.shadow is not None:
            predictions += _shadow_predict(serving, good, runtime, now, task_id)
    by_id = {f.claimed.image_id: f for f in fetched}
    with session_scope(runtime.session_factory) as session:
        queries.add_predictions(session=session, rows=predictions)
        new_verdicts = record_verdicts(
            session=session,
            image_ids=[f.claimed.image_id for f in good],
            model_version_id=version_id,
            settings=runtime.settings,
            now=now,
        )
        for image in queries.get_images(session=session, ids=by_id):
            item = by_id[image.id]
            if item.sha256 is not None:
                image.sha256, image.size = item.sha256, item.size
            if item.prepared is not None and item.prediction is not None:
                image.width, image.height = item.prepared.width, item.prepared.height
                image.content_type = PILImage.MIME.get(item.prepared.format)
                image.status, image.finished_at = ImageStatus.DONE, now
                image.failure_reason = None
                outcome.classified.append(image.id)
            elif isinstance(item.error, TransientError) and not final_attempt:
                outcome.retry.append(image.id)
                logger.warning(
                    "task %s image %d will be retried: %s", task_id, image.id, item.error
                )
            else:
                assert item.error is not None
                reason = failure_reason(item.error)
                if isinstance(item.error, TransientError):
                    reason = f"{reason} ({gave_up(item.claimed.attempts)})"
                _fail(image, reason, now)
                outcome.failed[image.id] = reason
                logger.warning("task %s image %d failed: %s", task_id, image.id, reason)
        outcome.deliveries = emit_verdicts_created(
            session,
            image_ids=new_verdicts,
            model_version_id=version_id,
            model_sha256=classifier.version,
            now=now,
        )


def prediction_row(
    image_id: int,
    version_id: int,
    classifier: Classifier,
    prediction: ModelPrediction,
    inference_ms: float,
    now: datetime,
) -> dict[str, object]:
    """The ``predictions`` row of one model's verdict on one image. ``faces`` is SQL
    NULL for a model without a face stage, a (possibly empty) list otherwise."""
    faces: object = null()
    if classifier.face_stage is not None:
        faces = [face.to_json() for face in prediction.faces]
    return {
        "image_id": image_id,
        "model_version_id": version_id,
        "score": prediction.score,
        "label": prediction.label,
        "threshold": prediction.threshold,
        "inference_ms": inference_ms,
        "faces": faces,
        "reason": prediction.reason,
        "created_at": now,
    }


def _predict(
    serving: Serving, good: list[_Fetched], runtime: Runtime, now: datetime
) -> list[dict[str, object]]:
    """Prediction rows of the shadow model on the batch, its crops scored in shared
    batches and timed on their own."""
    model = serving.shadow
    assert model is not None
    items: list[tuple[_Fetched, PreparedImage]] = []
    for f in good:
        prepared = f.prepared if serving.shadow_shares_inputs else f.shadow_prepared
        if prepared is not None:
            items.append((f, prepared))
    if not items:
        return []
    classifier = model.classifier
    with runtime.inference_lock:
        started = time.perf_counter()
        verdicts = classifier.predict_prepared([prepared for _, prepared in items])
        # One batched call: each image is charged its share of it.
        per_image_ms = (time.perf_counter() - started) * 1000 / len(items)
    return [
        prediction_row(f.claimed.image_id, model.version_id, classifier, p, per_image_ms, now)
        for (f, _), p in zip(items, verdicts, strict=True)
    ]


def _shadow_predict(
    serving: Serving,
    good: list[_Fetched],
    runtime: Runtime,
    now: datetime,
    task_id: str,
) -> list[dict[str, object]]:
    """The shadow model's rows, or none if it fails: it must never fail the batch."""
    try:
        return _predict(serving, good, runtime, now)
    except DeepscreenError as exc:
        assert serving.shadow is not None
        logger.error(
            "task %s: shadow model %s failed, its scores are skipped (images %s): %s",
            task_id,
            serving.shadow.sha256[:12],
            _ids([f.claimed.image_id for f in good]),
            exc,
        )
        return []


def _fail(image: Image, reason: str, now: datetime) -> None:
    image.status = ImageStatus.FAILED
    image.failure_reason = reason
    image.finished_at = now


def _ids(ids: Sequence[int]) -> str:
    return ",".join(str(i) for i in ids)
