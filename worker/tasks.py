"""The Celery tasks: thin adapters from a message to one plain function call.

Each task fixes the retry policy (transient errors only, exponential backoff with
full jitter, a bound) and hands its arguments to a function that has no Celery
import and is tested on its own: `worker.classify.classify_batch`,
`worker.microbatch.classify_pending`,
`deepscreen.commands.ingest.ingest`, `worker.reconcile.reconcile`, and
`worker.webhooks.deliver` and `dispatch`.

Tasks are registered on an app by `create_worker_app` rather than at import, and
close over a `Runtime` whose resources each worker process builds for itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery, Task

from deepscreen import taskqueue
from deepscreen.commands.ingest import ingest
from deepscreen.config import TASK_RETRY_MAX_DELAY, Settings
from deepscreen.errors import DatabaseUnavailable, TransientError
from worker.classify import classify_batch
from worker.microbatch import classify_pending
from worker.outage import OutageRetryTask
from worker.reconcile import reconcile, waiting_classify_messages
from worker.runtime import Runtime
from worker.webhooks import deliver, dispatch

#: Seconds before the first retry; doubles each time (2, 4, 8, ...), full jitter.
RETRY_BACKOFF = 2
#: Longest wait between two retries, in seconds (the visibility timeout allows for it).
RETRY_BACKOFF_MAX = TASK_RETRY_MAX_DELAY


def retry_policy(settings: Settings) -> dict[str, Any]:
    """Celery task options: retry `TransientError` only, with backoff, jitter and a bound
    of ``task_max_retries``; an unreachable database is retried for a bounded time
    instead (`worker.outage`)."""
    return {
        # Registered on this app only: a shared task is added to every app finalized
        # afterwards, so a second app in the process (tests) ran the first one's tasks.
        "shared": False,
        "base": OutageRetryTask,
        "database_retry_window": settings.database_retry_window,
        "autoretry_for": (TransientError,),
        "dont_autoretry_for": (DatabaseUnavailable,),
        "max_retries": settings.task_max_retries,
        "retry_backoff": RETRY_BACKOFF,
        "retry_backoff_max": RETRY_BACKOFF_MAX,
        "retry_jitter": True,
    }


def delivery_policy(settings: Settings) -> dict[str, Any]:
    """Options of the deliver task: only a database outage is retried (for a bounded
    time). A failed POST is recorded and retried on the webhook schedule, by the
    dispatcher."""
    return {**retry_policy(settings), "autoretry_for": ()}


def dispatched_expiry(settings: Settings) -> float:
    """Seconds a dispatched delivery message stays valid in the queue: the next
    dispatcher runs send a due delivery again, so a backlog holds a few copies at most."""
    return float(max(60, 4 * settings.webhook_dispatch_interval))


def create_worker_app(settings: Settings, runtime: Runtime | None = None) -> Celery:
    """`deepscreen.taskqueue.create_celery` plus the task implementations."""
    app = taskqueue.create_celery(settings)
    register_tasks(app, runtime or Runtime(settings))
    return app


def register_tasks(app: Celery, runtime: Runtime) -> None:
    """Register the classify, ingest, reconcile and webhook tasks on ``app``."""
    settings = runtime.settings
    policy = retry_policy(settings)

    def enqueue(ids: Sequence[int]) -> int:
        return taskqueue.enqueue_classify(app, ids, batch_size=settings.classify_batch_size)

    def enqueue_deliveries(ids: Sequence[int]) -> int:
        return taskqueue.enqueue_deliveries(app, ids)

    @app.task(name=taskqueue.CLASSIFY_BATCH, bind=True, **policy)
    def classify_batch_task(self: Task, image_ids: list[int]) -> dict[str, int]:
        # On the last allowed try, transient failures are recorded instead of raised.
        final = self.request.retries >= (self.max_retries or 0)
        outcome = classify_batch(
            image_ids,
            runtime=runtime,
            final_attempt=final,
            task_id=str(self.request.id),
            enqueue_deliveries=enqueue_deliveries,
        )
        return outcome.counts()

    @app.task(name=taskqueue.CLASSIFY_PENDING, bind=True, **policy)
    def classify_pending_task(self: Task, image_ids: list[int]) -> dict[str, int]:
        # ``image_ids`` (the images that sent this wake-up) are not claimed by id: the
        # batch is whatever is queued now (worker.microbatch).
        final = self.request.retries >= (self.max_retries or 0)
        outcome = classify_pending(
            runtime=runtime,
            final_attempt=final,
            task_id=str(self.request.id),
            enqueue_deliveries=enqueue_deliveries,
            wake=lambda: taskqueue.wake_up(app),
            taken=lambda: taskqueue.wake_up_taken(app),
        )
        return outcome.counts()

    @app.task(name=taskqueue.INGEST, bind=True, **policy)
    def ingest_task(self: Task, url: str) -> dict[str, int]:
        summary = ingest(
            runtime.open(url),
            settings=settings,
            session_factory=runtime.session_factory,
            enqueue=enqueue,
        )
        return summary.counts()

    @app.task(name=taskqueue.RECONCILE, bind=True, **policy)
    def reconcile_task(self: Task) -> dict[str, int]:
        outcome = reconcile(
            settings=settings,
            session_factory=runtime.session_factory,
            enqueue=enqueue,
            waiting_messages=lambda: waiting_classify_messages(settings),
        )
        return outcome.counts()

    @app.task(name=taskqueue.DELIVER_WEBHOOK, bind=True, **delivery_policy(settings))
    def deliver_webhook_task(self: Task, delivery_id: int) -> dict[str, object]:
        outcome = deliver(
            int(delivery_id), settings=settings, session_factory=runtime.session_factory
        )
        return outcome.summary()

    @app.task(name=taskqueue.DISPATCH_WEBHOOKS, bind=True, **policy)
    def dispatch_webhooks_task(self: Task) -> dict[str, int]:
        ids = dispatch(session_factory=runtime.session_factory)
        sent = taskqueue.enqueue_deliveries(app, ids, expires=dispatched_expiry(settings))
        return {"dispatched": sent}
