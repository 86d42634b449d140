"""Event-to-verdict latency: a put into SeaweedFS until its verdict, with no scan.

Run from the repository root, with Redis and PostgreSQL up and ``weed`` installed::

    python benchmarks/events.py [--n 200] [--workers 2] [--rate 5]

A throwaway SeaweedFS posts its filer notifications (``[notification.webhook]``) to
``deepscreen dashboard`` (gunicorn) at ``/events/seaweedfs``, which registers each new
object in a fresh PostgreSQL database and queues it on Redis; a ``deepscreen worker``
with ``--workers`` prefork processes classifies it. After a few warm-up images, N
images (../shared/data, else generated 256px JPEGs) are put one by one at ``--rate``
puts per second (0: as fast as 4 threads can), and for each the time from the put
returning to (a) its registration and (b) its verdict's ``finished_at`` is measured.
Printed: p50, p95 and max of both, and throughput (verdicts per second from the first
put to the last verdict). Each event is its own classify task of one image, so
throughput is lower than the batched scan path of benchmarks/pipeline.py.

The Redis database given by ``--redis-url`` is flushed before and after the run; a
PostgreSQL database ``deepscreen_bench_<random>`` is created and dropped.

A script, not a test: numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import add_service_options, benchmark_images, load_average, production_stack
from pipeline import (
    flush_redis,
    start_worker,
    stop_worker,
    wait_ready,
    worker_env,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.models import Image, ImageSource, ImageStatus
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.seaweedfs import free_port, webhook_notification
from deepscreen.storage import S3Store, make_s3_client

BUCKET = "events-bench"
PREFIX = "incoming/"
WARMUP = 4


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images, source = benchmark_images(args.n)
    rate = f"{args.rate:g}/s" if args.rate > 0 else "as fast as possible (4 threads)"
    print(
        f"images: {len(images)} from {source}  puts: {rate}  workers: {args.workers}  "
        f"cpus: {os.cpu_count()}  load average: {load_average()}"
    )
    port = free_port()
    secret = secrets.token_urlsafe(24)
    notification = webhook_notification(
        f"http://127.0.0.1:{port}/events/seaweedfs",
        bearer_token=secret,
        path_prefixes=[f"/buckets/{BUCKET}/{PREFIX}"],
    )
    with production_stack(
        args,
        notification,
        events_secret=secret,
        events_prefixes=(f"{BUCKET}/{PREFIX}",),
    ) as (settings, root):
        result = run(settings, images, root, args.workers, port, args.rate)
    report(result, len(images))
    print(f"load average after: {load_average()}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images put (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--rate", type=float, default=5.0, help="puts per second; 0 = as fast as possible"
    )
    add_service_options(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ the run


def run(
    settings: Settings, images: list[bytes], root: Path, workers: int, port: int, rate: float
) -> dict[str, float]:
    """Dashboard and worker up, warm-up, then the timed puts; returns the numbers."""
    migrate.upgrade(settings)
    flush_redis(settings.broker_url)
    client = make_s3_client(settings)
    client.create_bucket(Bucket=BUCKET)
    store = S3Store(BUCKET, client)
    dashboard = start_dashboard(settings, port, root / "dashboard.log")
    worker = start_worker(settings, workers, root / "worker.log")
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        wait_healthy(port, dashboard, root / "dashboard.log")
        wait_ready(worker, root / "worker.log")
        # Warm-up: every worker process loads its model; not measured
        warm = [f"{PREFIX}warmup-{i}.jpg" for i in range(WARMUP)]
        for key, data in zip(warm, images, strict=False):
            store.put(key, data)
        wait_done(factory, set(warm), worker, root)

        keys = [f"{PREFIX}{i:05d}.jpg" for i in range(len(images))]
        put_at: dict[str, float] = {}

        def put(i: int) -> None:
            store.put(keys[i], images[i])
            put_at[keys[i]] = time.time()

        first = time.time()
        if rate > 0:
            for i in range(len(images)):
                time.sleep(max(0.0, first + i / rate - time.time()))
                put(i)
        else:
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(put, range(len(images))))
        rows = wait_done(factory, set(keys), worker, root)
    finally:
        stop_worker(worker)
        stop_worker(dashboard)
        engine.dispose()
        flush_redis(settings.broker_url)
    finished = {r.key: r.finished_at.timestamp() for r in rows if r.finished_at is not None}
    registered = np.array([r.created_at.timestamp() - put_at[r.key] for r in rows])
    verdict = np.array([finished[key] - put_at[key] for key in keys])
    last = max(finished.values())
    return {
        "done": sum(r.status is ImageStatus.DONE for r in rows),
        "events": sum(r.source is ImageSource.EVENT for r in rows),
        "put_seconds": max(put_at.values()) - first,
        "seconds": last - first,
        "registered_p50": float(np.percentile(registered, 50)),
        "registered_p95": float(np.percentile(registered, 95)),
        "registered_max": float(registered.max()),
        "p50": float(np.percentile(verdict, 50)),
        "p95": float(np.percentile(verdict, 95)),
        "max": float(verdict.max()),
    }


def start_dashboard(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = worker_env(settings)
    env["DEEPSCREEN_EVENTS_SECRET"] = settings.events_secret
    env["DEEPSCREEN_EVENTS_PREFIXES"] = ",".join(settings.events_prefixes)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "deepscreen.cli", "dashboard", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not start; see {log}") from None
            time.sleep(0.2)


def wait_done(
    factory: sessionmaker[Session],
    keys: set[str],
    worker: subprocess.Popen[bytes],
    root: Path,
    timeout: float = 900,
) -> list[Image]:
    """Until every key has a finished image; returns those images."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(factory) as session:
            rows = list(
                session.scalars(
                    select(Image).where(Image.bucket == BUCKET, Image.finished_at.is_not(None))
                )
            )
            session.expunge_all()
        finished = [r for r in rows if r.key in keys]
        if len(finished) == len(keys):
            return finished
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{len(keys) - len(finished)} images unfinished; see {root}/*.log")
        time.sleep(0.1)


# --------------------------------------------------------------------- report


def report(r: dict[str, float], n: int) -> None:
    print()
    print(f"{'what':48} {'value':>10}")
    print(f"{'images put / registered from events / done':48} {n:>4} / {r['events']} / {r['done']}")
    print(f"{'puts took, s':48} {r['put_seconds']:>10.2f}")
    for name in ("p50", "p95", "max"):
        print(
            f"{'put -> registered (event received) ' + name + ', s':48} "
            f"{r['registered_' + name]:>10.3f}"
        )
    for name in ("p50", "p95", "max"):
        print(f"{'put -> verdict ' + name + ', s':48} {r[name]:>10.3f}")
    print(f"{'first put -> last verdict, s':48} {r['seconds']:>10.2f}")
    print(f"{'throughput, verdicts/s':48} {n / r['seconds']:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
