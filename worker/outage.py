"""Retrying a task through a database outage: for a bounded time, not a bounded count.

A task that finds the database unreachable (`DatabaseUnavailable`) is sent again
with a backoff of 2 s, doubling up to `TASK_RETRY_MAX_DELAY`, each wait drawn from
the upper half of its range (jitter that still backs off), until
``settings.database_retry_window`` seconds have passed since the first failure; then
it fails, and the reconciler enqueues its images again. Retries for the database
do not count against ``task_max_retries``, which bounds the other transient
failures (a flaky store): an outage of minutes must not use up an image's attempts
or make the next try its last.

The first failure's time and the retries so far travel in the message's headers,
so the bound holds whichever worker process takes the retry.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Task
from celery.exceptions import Retry

from deepscreen.config import TASK_RETRY_MAX_DELAY
from deepscreen.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

#: Message header: epoch seconds of the first database failure of this task.
OUTAGE_SINCE = "deepscreen_db_outage_since"
#: Message header: retries sent so far because of the database.
OUTAGE_RETRIES = "deepscreen_db_outage_retries"

#: Seconds before the first retry of an outage.
FIRST_DELAY = 2.0


def outage_delay(retries: int, rng: random.Random | None = None) -> float:
    """Seconds before retry ``retries`` + 1 of an outage: from the upper half of
    2, 4, 8, ... seconds, capped at `TASK_RETRY_MAX_DELAY`."""
    ceiling = min(float(TASK_RETRY_MAX_DELAY), FIRST_DELAY * 2 ** min(retries, 16))
    return (rng or random).uniform(ceiling / 2, ceiling)


class OutageRetryTask(Task):  # type: ignore[misc]
    """Base of the worker's tasks: `DatabaseUnavailable` is retried until
    `database_retry_window` seconds (a task option) have passed since it first
    happened. Other errors are left to the task's own policy."""

    #: Seconds to keep retrying while the database is unreachable.
    database_retry_window: float = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except DatabaseUnavailable as exc:
            retry = self.retry_outage(exc)
            if retry is None:
                raise
            raise retry from exc

    def retry_outage(self, exc: DatabaseUnavailable) -> Retry | None:
        """Send this task again after a backoff and return the `Retry` to raise, or
        None once the window is over (the task then fails with ``exc``)."""
        request = self.request
        if request.called_directly:
            return None
        now = time.time()
        since = float(request.get(OUTAGE_SINCE) or now)
        retries = int(request.get(OUTAGE_RETRIES) or 0)
        if now - since >= self.database_retry_window:
            logger.error(
                "task %s: database unavailable for %.0f s, giving up after %d retries: %s",
                request.id,
                now - since,
                retries,
                exc,
            )
            return None
        delay = outage_delay(retries)
        headers = {OUTAGE_SINCE: since, OUTAGE_RETRIES: retries + 1}
        # Same id, arguments and retry count (task_max_retries is not touched).
        sig = self.signature_from_request(request, countdown=delay, headers=headers)
        sig.apply_async()
        logger.warning(
            "task %s: database unavailable (for %.0f s), retry %d in %.1f s: %s",
            request.id,
            now - since,
            retries + 1,
            delay,
            exc,
        )
        return Retry(exc=exc, when=delay, sig=sig)
