"""Event-to-verdict latency and throughput at a sweep of put rates, next to the bulk rate.

Run from the repository root, with Redis and PostgreSQL up and ``weed`` installed::

    python benchmarks/events.py [--rates 5,30,60,90,max] [--seconds 10] [--workers 2]

A throwaway SeaweedFS posts its filer notifications (``[notification.webhook]``) to
``deepscreen dashboard`` (gunicorn) at ``/events/seaweedfs``, which registers each new
object in a fresh PostgreSQL database and queues it on Redis (a ``classify_pending``
wake-up: images that arrive while the workers are busy are classified together); a
``deepscreen worker`` with ``--workers`` prefork processes classifies it. After a few
warm-up images, for each rate in ``--rates`` (puts per second; ``max``: as fast as 4
threads can), ``rate x --seconds`` images (at least ``--min-n``; ``--max-n`` for
``max``) from ../shared/data (else generated 256px JPEGs) are put one by one, and for
each the time from the put returning to its verdict's ``finished_at`` is measured.
Each rate starts once the previous one is done. Printed per rate: puts/s achieved,
sustained verdicts/s (images / first put to last verdict), put -> verdict p50, p95
and max, and the mean images per classify batch; and, per rate and for the bulk run,
the CPU milliseconds per image each part of the stack used (worker, dashboard,
SeaweedFS, PostgreSQL, Redis, this script's puts), read from /proc. The puts are real
S3 ``PutObject`` requests to SeaweedFS's gateway, signed (SigV4), sent by a small client
of this script's own (`Uploader`) rather than boto3, whose CPU per put would otherwise
be taken from the workers on the same cores.

Then, in the same run (same workers, same images, same database): ``--bulk-n`` images
already in the bucket outside the events prefix are ingested (registered, and queued
in batches of ``DEEPSCREEN_CLASSIFY_BATCH_SIZE``) and the bulk rate is ingest start ->
last verdict, as in benchmarks/pipeline.py. Last, the targets of issue 15: live
throughput >= 0.8 x bulk, p95 <= 0.3 s at 60 puts/s, p50 <= 0.05 s at 5 puts/s.

The Redis database given by ``--redis-url`` is flushed before and after the run; a
PostgreSQL database ``deepscreen_bench_<random>`` is created and dropped.

A script, not a test: numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import os
import resource
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from botocore.client import BaseClient
from common import add_service_options, benchmark_images, load_average, production_stack
from pipeline import (
    flush_redis,
    start_worker,
    stop_worker,
    wait_ready,
    worker_env,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from deepscreen.commands.ingest import ingest
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.models import Image, ImageSource, ImageStatus
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.seaweedfs import free_port, webhook_notification
from deepscreen.storage import S3Store, make_s3_client
from deepscreen.taskqueue import create_celery, enqueue_classify

BUCKET = "events-bench"
PREFIX = "incoming/"
#: Where the bulk run's objects are: outside the events prefix, so they send no event.
BULK_PREFIX = "bulk/"
WARMUP = 4


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rates = parse_rates(args.rates)
    images, source = benchmark_images(args.max_n)
    print(
        f"images: {len(images)} distinct from {source}  rates: {args.rates}  "
        f"workers: {args.workers}  cpus: {os.cpu_count()}  load average: {load_average()}"
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
        sweep, bulk = run(settings, images, root, args, port, rates)
    report(sweep, bulk)
    print(f"load average after: {load_average()}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates",
        default="5,30,60,90,max",
        help="puts per second, comma-separated; max = as fast as 4 threads can "
        "(default 5,30,60,90,max)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of puts per rate")
    parser.add_argument("--min-n", type=int, default=100, help="fewest images put per rate")
    parser.add_argument("--max-n", type=int, default=1000, help="images put at the max rate")
    parser.add_argument("--bulk-n", type=int, default=1000, help="images of the bulk run")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    add_service_options(parser)
    return parser.parse_args(argv)


def parse_rates(raw: str) -> list[float]:
    """``5,30,max`` -> [5.0, 30.0, 0.0] (0: as fast as possible)."""
    return [0.0 if part.strip() == "max" else float(part) for part in raw.split(",")]


def count_for(rate: float, args: argparse.Namespace) -> int:
    return args.max_n if rate <= 0 else max(args.min_n, round(rate * args.seconds))


# ------------------------------------------------------------------ the run


def run(
    settings: Settings,
    images: list[bytes],
    root: Path,
    args: argparse.Namespace,
    port: int,
    rates: list[float],
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Dashboard and worker up, warm-up, each rate in turn, then the bulk run."""
    migrate.upgrade(settings)
    flush_redis(settings.broker_url)
    client = make_s3_client(settings)
    client.create_bucket(Bucket=BUCKET)
    store = S3Store(BUCKET, client)
    # The bulk run's objects, outside the events prefix (no event), uploaded first
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: store.put(f"{BULK_PREFIX}{i:05d}.jpg", images[i % len(images)]),
                range(args.bulk_n),
            )
        )
    dashboard = start_dashboard(settings, port, root / "dashboard.log")
    worker = start_worker(settings, args.workers, root / "worker.log")
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        wait_healthy(port, dashboard, root / "dashboard.log")
        wait_ready(worker, root / "worker.log")
        uploader = Uploader(settings, BUCKET)
        # Warm-up: every worker process loads its model; not measured
        warm = [f"{PREFIX}warmup-{i}.jpg" for i in range(WARMUP)]
        for key, data in zip(warm, images, strict=False):
            uploader.put(key, data)
        wait_done(factory, set(warm), worker, root)
        roots = {"dashboard": dashboard.pid, "worker": worker.pid}
        sweep = []
        for rate in rates:
            time.sleep(1.0)  # idle between rates
            before = cpu_seconds(roots)
            n = count_for(rate, args)
            result = put_at_rate(uploader, factory, images, rate, n, worker, root)
            result["cpu"] = per_image(before, cpu_seconds(roots), n)
            print(row(result), flush=True)
            sweep.append(result)
        time.sleep(1.0)
        before = cpu_seconds(roots)
        bulk = bulk_run(settings, client, factory, args.bulk_n, worker, root)
        bulk["cpu"] = per_image(before, cpu_seconds(roots), args.bulk_n)
    finally:
        stop_worker(worker)
        stop_worker(dashboard)
        engine.dispose()
        flush_redis(settings.broker_url)
    return sweep, bulk


def put_at_rate(
    uploader: Uploader,
    factory: sessionmaker[Session],
    images: list[bytes],
    rate: float,
    n: int,
    worker: subprocess.Popen[bytes],
    root: Path,
) -> dict[str, float]:
    """Put ``n`` images at ``rate`` per second (0: 4 threads flat out) under a prefix of
    their own; wait for every verdict; the numbers."""
    label = "max" if rate <= 0 else f"{rate:g}"
    keys = [f"{PREFIX}rate-{label}/{i:05d}.jpg" for i in range(n)]
    put_at: dict[str, float] = {}

    def put(i: int) -> None:
        uploader.put(keys[i], images[i % len(images)])
        put_at[keys[i]] = time.time()

    first = time.time()
    if rate > 0:
        for i in range(n):
            time.sleep(max(0.0, first + i / rate - time.time()))
            put(i)
    else:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(put, range(n)))
    rows = wait_done(factory, set(keys), worker, root)
    finished = {r.key: r.finished_at.timestamp() for r in rows if r.finished_at is not None}
    verdict = np.array([finished[key] - put_at[key] for key in keys])
    last = max(finished.values())
    return {
        "rate": rate,
        "n": n,
        "done": sum(r.status is ImageStatus.DONE for r in rows),
        "events": sum(r.source is ImageSource.EVENT for r in rows),
        "puts_per_s": n / max(1e-9, max(put_at.values()) - first),
        "verdicts_per_s": n / (last - first),
        "p50": float(np.percentile(verdict, 50)),
        "p95": float(np.percentile(verdict, 95)),
        "max": float(verdict.max()),
        "batches": len({r.claimed_by for r in rows}),
    }


class Uploader:
    """The live run's uploads: plain S3 ``PutObject`` requests to SeaweedFS's gateway,
    signed with AWS Signature V4 (the payload's SHA-256 signed, a CRC32 checksum sent,
    as boto3 does over http), one keep-alive connection per thread.

    Uploads come from clients on other machines in a deployment; boto3 spends about
    1.7 ms of CPU a put (and asks ``Expect: 100-continue``, a round trip more), which on
    this 2-core machine is taken from the workers. This sends the same object through
    the same authenticated S3 path for about 0.25 ms. The bulk run's objects are still
    uploaded with boto3, before it is timed.
    """

    def __init__(self, settings: Settings, bucket: str) -> None:
        endpoint = urllib.parse.urlsplit(settings.s3_endpoint_url)
        if endpoint.scheme != "http" or endpoint.hostname is None:
            raise ValueError(f"an http:// endpoint is needed, not {settings.s3_endpoint_url}")
        self._address = (endpoint.hostname, endpoint.port or 80)
        self._host = endpoint.netloc
        self._bucket = bucket
        self._region = settings.s3_region
        self._key_id = settings.s3_access_key_id
        self._secret = settings.s3_secret_access_key
        self._local = threading.local()

    def put(self, key: str, data: bytes) -> str:
        """PUT ``data`` under ``key``; returns the ETag. Raises on any answer but 200."""
        path = f"/{self._bucket}/" + urllib.parse.quote(key, safe="/~")
        headers = self._signed(path, data)
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(*self._address, timeout=30)
            self._local.connection = connection
        try:
            connection.request("PUT", path, body=data, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self._local.connection = None
            raise
        if response.status != 200:
            raise RuntimeError(f"PUT {path}: {response.status} {body[:200]!r}")
        return str(response.getheader("ETag", "")).strip('"')

    def _signed(self, path: str, data: bytes) -> dict[str, str]:
        now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        day = now[:8]
        signed = {
            "host": self._host,
            "x-amz-checksum-crc32": base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode(),
            "x-amz-content-sha256": hashlib.sha256(data).hexdigest(),
            "x-amz-date": now,
        }
        names = ";".join(sorted(signed))
        canonical = "\n".join(
            [
                "PUT",
                path,
                "",
                *(f"{name}:{signed[name]}" for name in sorted(signed)),
                "",
                names,
                signed["x-amz-content-sha256"],
            ]
        )
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", now, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        key = ("AWS4" + self._secret).encode()
        for part in (day, self._region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers = {"Host" if name == "host" else name: value for name, value in signed.items()}
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self._key_id}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        headers["Content-Length"] = str(len(data))
        return headers


def bulk_run(
    settings: Settings,
    client: BaseClient,
    factory: sessionmaker[Session],
    n: int,
    worker: subprocess.Popen[bytes],
    root: Path,
) -> dict[str, float]:
    """Ingest the bulk objects (register, queue in full batches); ingest start -> last
    verdict, as benchmarks/pipeline.py times it."""
    app = create_celery(settings)
    t0 = time.time()
    summary = ingest(
        S3Store(BUCKET, client, prefix=BULK_PREFIX),
        settings=settings,
        session_factory=factory,
        enqueue=lambda ids: enqueue_classify(app, ids, batch_size=settings.classify_batch_size),
    )
    keys = {f"{BULK_PREFIX}{i:05d}.jpg" for i in range(n)}
    rows = wait_done(factory, keys, worker, root)
    last = max(r.finished_at.timestamp() for r in rows if r.finished_at is not None)
    return {
        "n": summary.new,
        "done": sum(r.status is ImageStatus.DONE for r in rows),
        "images_per_s": n / (last - t0),
        "seconds": last - t0,
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


def cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each part of the stack, from /proc: the process trees
    of ``roots`` (name -> pid), SeaweedFS, PostgreSQL and Redis (every such process on
    the machine), and this script; empty where /proc is missing."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[str, int, float]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(entry.name)] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    by_root = {pid: name for name, pid in roots.items()}
    totals: dict[str, float] = {}
    for pid, (comm, _, cpu) in procs.items():
        group, up = None, pid
        while up in procs and group is None:
            group = by_root.get(up)
            up = procs[up][1]
        if group is None:
            group = {"weed": "seaweedfs", "redis-server": "redis"}.get(comm)
            group = group or ("postgres" if comm.startswith("postgres") else None)
        if group is not None:
            totals[group] = totals.get(group, 0.0) + cpu
    if procs:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        totals["benchmark"] = usage.ru_utime + usage.ru_stime
    return totals


def per_image(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Milliseconds of CPU per image, by part, between two `cpu_seconds`."""
    return {k: 1000 * (after[k] - before.get(k, 0.0)) / n for k in sorted(after)}


def wait_done(
    factory: sessionmaker[Session],
    keys: set[str],
    worker: subprocess.Popen[bytes],
    root: Path,
    timeout: float = 900,
) -> list[Image]:
    """Until every key (all under one folder) has a finished image; returns those
    images. Polls a count, so waiting costs the workers little CPU."""
    folder = os.path.commonprefix(sorted(keys))
    mine = (Image.bucket == BUCKET) & Image.key.startswith(folder, autoescape=True)
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(factory) as session:
            finished = session.scalar(
                select(func.count()).where(mine, Image.finished_at.is_not(None))
            )
        if finished is not None and finished >= len(keys):
            break
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{len(keys) - (finished or 0)} images unfinished; see {root}/*.log")
        time.sleep(0.05)
    with session_scope(factory) as session:
        rows = list(session.scalars(select(Image).where(mine, Image.finished_at.is_not(None))))
        session.expunge_all()
    return [r for r in rows if r.key in keys]


# --------------------------------------------------------------------- report

#: Issue 15's targets.
TARGET_RATIO = 0.8
TARGET_P95_AT_60 = 0.300
TARGET_P50_AT_5 = 0.050


def row(r: dict[str, float]) -> str:
    label = "max" if r["rate"] <= 0 else f"{r['rate']:g}"
    return (
        f"{label:>6} {r['puts_per_s']:>9.1f} {r['verdicts_per_s']:>11.1f} {r['p50']:>8.3f} "
        f"{r['p95']:>8.3f} {r['max']:>8.3f} {r['n'] / max(1, r['batches']):>9.1f} "
        f"{int(r['done']):>5}/{int(r['n'])}"
    )


def report(sweep: list[dict[str, float]], bulk: dict[str, float]) -> None:
    print()
    print(
        f"{'puts/s':>6} {'achieved':>9} {'verdicts/s':>11} {'p50 s':>8} {'p95 s':>8} "
        f"{'max s':>8} {'img/batch':>9} {'done':>9}"
    )
    for r in sweep:
        print(row(r))
    print(
        f"\nbulk pipeline (same workers, same images): {bulk['n']:.0f} images ingested, "
        f"{int(bulk['done'])} done, {bulk['images_per_s']:.1f} images/s"
    )
    print("\nCPU ms per image, by part of the stack (the machine's other work excluded):")
    parts = sorted({k for r in [*sweep, bulk] for k in r["cpu"]})
    print(f"{'run':>6} " + " ".join(f"{p:>10}" for p in parts) + f" {'total':>8}")
    for r in [*sweep, bulk]:
        label = "bulk" if r is bulk else ("max" if r["rate"] <= 0 else f"{r['rate']:g}")
        cpu = r["cpu"]
        print(
            f"{label:>6} "
            + " ".join(f"{cpu.get(p, 0.0):>10.2f}" for p in parts)
            + f" {sum(cpu.values()):>8.2f}"
        )
    live = max(r["verdicts_per_s"] for r in sweep)
    ratio = live / bulk["images_per_s"]
    checks = [
        (
            f"live throughput / bulk = {live:.1f} / {bulk['images_per_s']:.1f} = {ratio:.2f}",
            f">= {TARGET_RATIO}",
            ratio >= TARGET_RATIO,
        ),
    ]
    by_rate = {r["rate"]: r for r in sweep}
    if 60 in by_rate:
        p95 = by_rate[60]["p95"]
        checks.append(
            (f"p95 at 60 puts/s = {p95:.3f} s", f"<= {TARGET_P95_AT_60}", p95 <= TARGET_P95_AT_60)
        )
    if 5 in by_rate:
        p50 = by_rate[5]["p50"]
        checks.append(
            (f"p50 at 5 puts/s = {p50:.3f} s", f"<= {TARGET_P50_AT_5}", p50 <= TARGET_P50_AT_5)
        )
    print()
    for what, target, met in checks:
        print(f"{what:56} target {target:8} {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
