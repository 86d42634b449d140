"""End-to-end throughput of the moderation pipeline against its inference-only rate.

Run from the repository root, with Redis and PostgreSQL up and ``weed`` installed::

    python benchmarks/pipeline.py [--n 2000] [--workers 2]

N images (../shared/data, else generated 256px JPEGs) are uploaded to a throwaway
SeaweedFS; then, timed: ``ingest`` registers them in a fresh PostgreSQL database and
queues classify batches on Redis, and a ``deepscreen worker`` subprocess with
``--workers`` prefork processes (one LiteRT thread each) classifies them. Printed,
from the same run: end-to-end images/s; the inference-only rate of
`deepscreen.inference` (prepare, the face stage included, + batched predict on the same bytes in memory, on the
same cores, best of ``workers`` processes x 1 thread and 1 process x ``workers``
threads, at batch 1 and at the classify batch size); their ratio; p50/p95 latency from registration to verdict; peak RSS per
worker process; last, ``ratio: X.XX``. Project target: ratio >= 0.65.

The Redis database given by ``--redis-url`` is flushed before and after the run; a
PostgreSQL database ``deepscreen_bench_<random>`` is created and dropped.

A script, not a test: numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from common import REPO_ROOT, add_service_options, benchmark_images, load_average, production_stack
from sqlalchemy import select

from deepscreen.commands.ingest import ingest
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.models import Image, ImageStatus
from deepscreen.db.queries import count_images_by_status
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.inference import Classifier
from deepscreen.storage import S3Store, make_s3_client
from deepscreen.taskqueue import create_celery, enqueue_classify

TARGET_RATIO = 0.65
BUCKET = "bench"
PREFIX = "incoming/"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images, source = benchmark_images(args.n)
    print(
        f"images: {len(images)} from {source}  workers: {args.workers}  "
        f"batch: {args.batch_size}  cpus: {os.cpu_count()}  load average: {load_average()}"
    )
    with production_stack(args, classify_batch_size=args.batch_size) as (settings, root):
        e2e = run_pipeline(settings, images, root, args.workers)
    inference = inference_only(images, args.workers, args.batch_size)
    report(e2e, inference, len(images))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images (default 2000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--batch-size", type=int, default=Settings().classify_batch_size, help="images per task"
    )
    add_service_options(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------- services


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSCREEN_")}
    values = {
        "DATA_DIR": settings.data_dir,
        "DATABASE_URL": settings.database_url,
        "BROKER_URL": settings.broker_url,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "S3_REGION": settings.s3_region,
        "S3_ACCESS_KEY_ID": settings.s3_access_key_id,
        "S3_SECRET_ACCESS_KEY": settings.s3_secret_access_key,
        "INFERENCE_THREADS": settings.inference_threads,
        "CLASSIFY_BATCH_SIZE": settings.classify_batch_size,
    }
    env.update({f"DEEPSCREEN_{k}": str(v) for k, v in values.items()})
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


# ------------------------------------------------------------------ end to end


def run_pipeline(settings: Settings, images: list[bytes], root: Path, workers: int) -> dict:
    """Upload, start a worker, then time ingest -> every verdict. Returns the numbers."""
    migrate.upgrade(settings)
    flush_redis(settings.broker_url)
    client = make_s3_client(replace(settings, s3_max_attempts=5))
    client.create_bucket(Bucket=BUCKET)
    store = S3Store(BUCKET, client)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put(f"{PREFIX}{i:05d}.jpg", images[i]), range(len(images))))
    print(f"uploaded {len(images)} images to SeaweedFS in {time.perf_counter() - started:.1f} s")

    log = root / "worker.log"
    worker = start_worker(settings, workers, log)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        wait_ready(worker, log)
        app = create_celery(settings)
        t0 = time.time()
        summary = ingest(
            S3Store(BUCKET, client, prefix=PREFIX),
            settings=settings,
            session_factory=factory,
            enqueue=lambda ids: enqueue_classify(app, ids, batch_size=settings.classify_batch_size),
        )
        ingest_seconds = time.time() - t0
        while True:
            with session_scope(factory) as session:
                counts = count_images_by_status(session=session)
            if counts[ImageStatus.QUEUED] + counts[ImageStatus.PROCESSING] == 0:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        rss = peak_rss(worker.pid)
        with session_scope(factory) as session:
            rows = session.execute(select(Image.created_at, Image.finished_at, Image.status)).all()
    finally:
        stop_worker(worker)
        engine.dispose()
        flush_redis(settings.broker_url)
    done = [r for r in rows if r.status is ImageStatus.DONE]
    last = max(as_epoch(r.finished_at) for r in rows)
    latencies = np.array([as_epoch(r.finished_at) - as_epoch(r.created_at) for r in done])
    return {
        "registered": summary.new,
        "done": len(done),
        "failed": len(rows) - len(done),
        "seconds": last - t0,
        "ingest_seconds": ingest_seconds,
        "p50": float(np.percentile(latencies, 50)),
        "p95": float(np.percentile(latencies, 95)),
        "rss": rss,
    }


def as_epoch(moment: datetime) -> float:
    return moment.timestamp()


def start_worker(settings: Settings, workers: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "deepscreen.cli", "worker", f"--concurrency={workers}"],
            env=worker_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(worker: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    """Until Celery logs that the worker is ready (its pool processes are forked)."""
    deadline = time.monotonic() + timeout
    while " ready." not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start; see {log}")
        time.sleep(0.2)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)


def peak_rss(pid: int) -> dict[str, float]:
    """Peak resident set (VmHWM, MiB) of the worker's main process and its children."""
    out: dict[str, float] = {}
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid] + ([int(c) for c in children.read_text().split()] if children.exists() else [])
    for i, p in enumerate(pids):
        status = Path(f"/proc/{p}/status")
        if not status.exists():
            continue
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["main" if i == 0 else f"pool-{i}"] = int(line.split()[1]) / 1024
    return out


# -------------------------------------------------------------- inference only

_classifier: Classifier | None = None


def _load(threads: int) -> None:
    global _classifier
    _classifier = Classifier(num_threads=threads)


def _classify(batch: list[bytes]) -> int:
    """Prepare (decode, and the face stage when the model has one) and score a batch,
    as a worker does, without the queue, store and database around it."""
    assert _classifier is not None
    _classifier.predict_prepared([_classifier.prepare(data) for data in batch])
    return len(batch)


def inference_only(images: list[bytes], cores: int, batch: int) -> dict[str, float]:
    """images/s of decode + predict on in-memory bytes, model already loaded, at batch 1
    and at ``batch``, as ``cores`` processes x 1 thread and 1 process x ``cores`` threads.
    The report compares the pipeline with the best of them."""
    rates: dict[str, float] = {}
    for size in sorted({1, batch}):
        batches = [images[i : i + size] for i in range(0, len(images), size)]
        with get_context("fork").Pool(cores, initializer=_load, initargs=(1,)) as pool:
            pool.map(_classify, batches[: cores * 2], chunksize=1)  # warm up every process
            started = time.perf_counter()
            total = sum(pool.imap_unordered(_classify, batches, chunksize=1))
            rates[f"{cores} processes x 1 thread, batch {size}"] = total / (
                time.perf_counter() - started
            )
        _load(cores)
        _classify(batches[0])
        started = time.perf_counter()
        total = sum(_classify(b) for b in batches)
        rates[f"1 process x {cores} threads, batch {size}"] = total / (
            time.perf_counter() - started
        )
    return rates


# --------------------------------------------------------------------- report


def report(e2e: dict, inference: dict[str, float], n: int) -> None:
    rate = e2e["done"] / e2e["seconds"]
    best_name, best = max(inference.items(), key=lambda kv: kv[1])
    ratio = rate / best
    print()
    print(f"{'what':48} {'value':>10}")
    print(
        f"{'images registered / done / failed':48} {e2e['registered']:>4} / {e2e['done']} / "
        f"{e2e['failed']}"
    )
    print(f"{'ingest (list + register + enqueue), s':48} {e2e['ingest_seconds']:>10.2f}")
    print(f"{'ingest start -> last verdict, s':48} {e2e['seconds']:>10.2f}")
    print(f"{'end-to-end images/s':48} {rate:>10.1f}")
    for name, value in inference.items():
        print(f"{'inference-only images/s, ' + name:48} {value:>10.1f}")
    print(f"{'latency registration -> verdict p50, s':48} {e2e['p50']:>10.2f}")
    print(f"{'latency registration -> verdict p95, s':48} {e2e['p95']:>10.2f}")
    for name, mib in e2e["rss"].items():
        print(f"{'peak RSS worker ' + name + ', MiB':48} {mib:>10.1f}")
    verdict = "PASS" if ratio >= TARGET_RATIO else "MISSED"
    print(f"\nend-to-end / best inference-only ({best_name}): target >= {TARGET_RATIO}: {verdict}")
    print(f"ratio: {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
