"""A Redis outage under a running worker (issue 14, item 7): the batches that finished
while the broker was away are not timed out when it comes back.

While the worker reconnects, its event loop does not run, so it reads none of the
results its pool processes send. Before the fix, the loop's first act once Redis was
back was to fire the soft time limits that had fallen due meanwhile, before reading
those results: every process whose batch had finished during the outage got
SIGUSR1, raised ``SoftTimeLimitExceeded`` while idle, exited with code 1 and was
replaced (loading the model again).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from pipeline_helpers import Process, ingest_bucket, pending, wait_decided, wait_for
from sqlalchemy import Engine

#: Short limits, so that an outage of a few seconds outlasts the soft limit, and
#: batches long enough to be in flight when Redis goes.
SETTINGS = {
    "DEEPSCREEN_TASK_SOFT_TIME_LIMIT": "8",
    "DEEPSCREEN_TASK_TIME_LIMIT": "12",
    "DEEPSCREEN_CLASSIFY_BATCH_SIZE": "40",
}

#: Seconds Redis stays down: longer than the soft limit.
OUTAGE = 14

#: Outages tried, each on a fresh bucket, until one catches a batch in flight.
ATTEMPTS = 3

#: Seconds the run gets to get going, and the worker to reconnect.
DEADLINE = 300

#: What the worker logs when a pool process dies (billiard) or a soft limit fires (Celery).
PROCESS_DIED = re.compile(r"Process '[^']+' pid:\d+ exited with 'exitcode \d+'")
SOFT_LIMIT = re.compile(r"Soft time limit \(\d+(\.\d+)?s\) exceeded|SoftTimeLimitExceeded")
LOST = "Connection to broker lost"
CONNECTED = "Connected to redis://"
FINISHED = re.compile(r"ForkPoolWorker-\d+\] Task \S+ succeeded")


def finished_while_away(log: str) -> bool:
    """Whether a pool process finished a batch between the worker's last loss of the
    broker and its reconnection (when its event loop was not running)."""
    lost = log.rfind(LOST)
    back = log.find(CONNECTED, lost)
    return lost >= 0 and back > lost and FINISHED.search(log, lost, back) is not None


def test_batches_finished_during_a_redis_outage_are_not_timed_out(
    stack_env: dict[str, str],
    stack_engine: Engine,
    fill_bucket: Callable[[int], str],
    start_process: Callable[..., Process],
    redis_server,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    env = {**stack_env, **SETTINGS, "DEEPSCREEN_BROKER_URL": redis_server.url}
    worker = start_process(["worker", "--concurrency", "2"], env)
    caught = 0
    for _ in range(ATTEMPTS):
        # Given a worker of two processes at work on 300 images, with a soft time
        # limit of 8 s (Redis comes back empty, so each outage gets a fresh bucket)
        bucket = fill_bucket(300)
        ingest_bucket(bucket, env, tmp_path)
        wait_decided(
            stack_engine, bucket, worker, timeout=DEADLINE, what="the worker to start", left=263
        )
        assert pending(stack_engine, bucket) > 0, "the run finished before the outage"
        # When Redis is killed under it, stays down longer than the soft limit, and
        # comes back
        redis_server.kill()
        time.sleep(OUTAGE)
        redis_server.start()
        reconnects = worker.output().count(CONNECTED)
        wait_for(
            lambda n=reconnects: (
                worker.output().count(CONNECTED) > n  # type: ignore[misc]
                or worker.proc.poll() is not None
            ),
            timeout=DEADLINE,
            what="the worker to reconnect to Redis",
        )
        # ... with batches that finished while the worker was away
        caught += finished_while_away(worker.output())
        if caught:
            break
    assert caught, f"no outage of {ATTEMPTS} caught a batch in flight: {worker.output()}"
    # ... and the worker has had time to read its pool's results and time out
    # whatever really is still running
    time.sleep(float(SETTINGS["DEEPSCREEN_TASK_TIME_LIMIT"]) + 5)
    # Then no soft time limit fired and no pool process died
    log = worker.output()
    assert worker.proc.poll() is None, log
    assert not SOFT_LIMIT.search(log), log
    assert not PROCESS_DIED.search(log), log
