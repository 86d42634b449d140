"""Where one image's time goes in the worker: cProfile over the live path's task body.

Run from the repository root, with PostgreSQL up and ``weed`` installed::

    python benchmarks/profile_worker.py [--n 200] [--batch 1] [--top 25]

N images (../shared/data, else generated 256px JPEGs) are put into a throwaway
SeaweedFS and registered in a scratch PostgreSQL database; then, in this process, a
warm `Runtime` (model loaded, connections open) runs `worker.microbatch.classify_pending`
once per ``--batch`` queued images, as a worker does for each wake-up at that load
(batch 1: a lone image at idle), under cProfile. Printed: milliseconds per image of
the whole call and of each phase (model-version check, claim, fetch + prepare,
inference, record + commit), then the profile's top entries by own time and by
cumulative time. Celery's own per-message cost is not in it (see benchmarks/events.py).

A script, not a test: numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import add_service_options, benchmark_images, load_average, production_stack
from sqlalchemy import event

from deepscreen.db import migrate, queries
from deepscreen.db.models import ImageSource
from deepscreen.db.session import session_scope
from deepscreen.storage import ObjectInfo, S3Store, make_s3_client
from worker.microbatch import classify_pending
from worker.runtime import Runtime

BUCKET = "profile"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    images, source = benchmark_images(args.n + args.warmup)
    print(
        f"images: {args.n} from {source}  batch: {args.batch}  cpus: {os.cpu_count()}  "
        f"load average: {load_average()}"
    )
    args.workers = 1
    with production_stack(args, classify_batch_size=args.batch) as (settings, _root):
        migrate.upgrade(settings)
        client = make_s3_client(settings)
        client.create_bucket(Bucket=BUCKET)
        store = S3Store(BUCKET, client)
        keys = [f"incoming/{i:05d}.jpg" for i in range(len(images))]
        with ThreadPoolExecutor(8) as pool:
            etags = list(pool.map(lambda i: store.put(keys[i], images[i]), range(len(images))))
        runtime = Runtime(settings)
        statements = count_statements(runtime)
        try:
            warm, timed = (
                list(zip(keys, etags, strict=True))[: args.warmup],
                list(zip(keys, etags, strict=True))[args.warmup :],
            )
            run(runtime, warm, args.batch)  # model loaded, pools and connections open
            profiler = cProfile.Profile()
            started = time.perf_counter()
            statements.clear()
            phases = run(runtime, timed, args.batch, profiler)
            seconds = time.perf_counter() - started
            phases.update({k: float(v) for k, v in statements.items()})
        finally:
            runtime.close()
    report(profiler, phases, seconds, len(timed), args.top)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="images profiled (default 200)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--warmup", type=int, default=8, help="images before profiling")
    parser.add_argument("--top", type=int, default=25, help="profile entries printed")
    add_service_options(parser)
    return parser.parse_args(argv)


def count_statements(runtime: Runtime) -> Counter[str]:
    """Counts of the SQL statements (by first word) and commits the runtime's engine
    sends from now on; registration is counted too and taken out in `run`."""
    counts: Counter[str] = Counter()
    engine = runtime.session_factory.kw["bind"]

    def on_execute(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        counts[statement.split(None, 1)[0].upper()] += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", lambda conn: counts.update(["COMMIT"]))
    return counts


def run(
    runtime: Runtime,
    objects: list[tuple[str, str]],
    batch: int,
    profiler: cProfile.Profile | None = None,
) -> dict[str, float]:
    """Register ``batch`` images, then one profiled `classify_pending` call; repeat."""
    total = 0.0
    for start in range(0, len(objects), batch):
        chunk = objects[start : start + batch]
        with session_scope(runtime.session_factory) as session:
            queries.register_images(
                session=session,
                objects=[ObjectInfo(BUCKET, key, etag, None, None) for key, etag in chunk],
                source=ImageSource.EVENT,
            )
        began = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        outcome = classify_pending(runtime=runtime, task_id=f"profile-{start}")
        if profiler is not None:
            profiler.disable()
        total += time.perf_counter() - began
        if len(outcome.classified) != len(chunk):
            raise RuntimeError(f"expected {len(chunk)} classified, got {outcome.counts()}")
    return {"call": total, "calls": float(len(range(0, len(objects), batch)))}


def report(
    profiler: cProfile.Profile, phases: dict[str, float], seconds: float, n: int, top: int
) -> None:
    print(f"\nclassify_pending: {phases['call'] * 1000 / n:.2f} ms per image over {n} images")
    print(f"with registration between calls: {seconds * 1000 / n:.2f} ms per image")
    calls = phases["calls"]
    # Each registration (INSERT + COMMIT) is in the counts; take it out.
    sql = {k: v for k, v in phases.items() if k not in ("call", "calls")}
    sql["INSERT"] = sql.get("INSERT", 0) - calls
    sql["COMMIT"] = sql.get("COMMIT", 0) - calls
    per_call = ", ".join(f"{k} {v / calls:.1f}" for k, v in sorted(sql.items()) if v)
    print(f"SQL per call ({n / calls:.0f} images): {per_call}")
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order)
        stats.print_stats(top)
        print(f"\n--- top {top} by {order} ---")
        print(out.getvalue().split("\n", 6)[-1] if order else out.getvalue())


if __name__ == "__main__":
    sys.exit(main())
