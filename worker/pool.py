"""The prefork pool of ``deepscreen worker``: Celery's, with time limits that spare a
batch which has already finished.

Celery's prefork pool enforces time limits in the worker's main process, with a
timer per task on its event loop; the timer sends SIGUSR1 to the pool process if
the task's result has not been read by then. While the worker reconnects to the
broker, that loop does not run: results the pool processes send meanwhile stay
unread in their pipes, and the timers fall due. When the loop starts again it fires
its timers before it reads the pipes, so every task that finished during the outage
looked as if it had overrun its soft limit. The signal reached an idle process,
which raised ``SoftTimeLimitExceeded`` outside any task, exited with code 1 and was
replaced, loading the model again (issue 14, item 7: a Redis restart).

`AsynPool` looks first: if the process running the task has sent something that
is not read yet, the soft limit is checked again a moment later, after the loop has
read it. A task that really overruns sends nothing, so it is signalled as before.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.concurrency import asynpool, prefork

logger = logging.getLogger(__name__)

#: Seconds before a deferred soft limit is checked again (the loop reads its pipes
#: in between).
RECHECK_DELAY = 0.1
#: Checks at most, per task, before a soft limit fires even with data waiting.
MAX_RECHECKS = 50


class AsynPool(asynpool.AsynPool):  # type: ignore[misc]
    """Celery's asynchronous prefork pool; a soft limit falls due only after the
    results already sent by the task's process have been read."""

    def _on_soft_timeout(
        self, job: int, soft: float, hard: float, hub: Any, rechecks: int = 0
    ) -> None:
        if rechecks < MAX_RECHECKS and self._unread_output(job):
            logger.debug("soft time limit of job %s: output unread, checking again", job)
            # Kept where the pool cancels it when the job's result arrives.
            self._tref_for_id[job] = hub.call_later(
                RECHECK_DELAY, self._on_soft_timeout, job, soft, hard, hub, rechecks + 1
            )
            return
        super()._on_soft_timeout(job, soft, hard, hub)

    def _unread_output(self, job: int) -> bool:
        """Whether the process running ``job`` has written to its result pipe
        something the event loop has not read yet."""
        result = self._cache.get(job)
        pid = getattr(result, "_worker_pid", None)
        if pid is None:
            return False
        for proc in list(self._pool):
            if proc.pid == pid:
                try:
                    return bool(proc.outq._reader.poll(0))
                except (OSError, EOFError, AttributeError):
                    return False
        return False


class TaskPool(prefork.TaskPool):  # type: ignore[misc]
    """``worker_pool`` of ``deepscreen worker``: the prefork pool with `AsynPool`."""

    Pool = AsynPool


#: The ``worker_pool`` setting that selects `TaskPool`.
PREFORK_POOL = f"{__name__}:TaskPool"
