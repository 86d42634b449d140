"""Webhook delivery throughput: deliveries per second to a loopback receiver through the
real `worker.webhooks.deliver` (claim, sign, POST, record), and their latency.

Run from the repository root::

    python benchmarks/webhooks.py [-n 500] [--threads 1 4] [--postgres]

Emits N events for one endpoint, then delivers them with each number of threads
(each thread is what one worker process does: one delivery at a time). The receiver
is the receiver kit's example (examples/webhook_receiver.py) in this process: it
verifies every signature and deduplicates by id. Prints deliveries/s, and p50/p95 of
the HTTP round trip (``last_latency_ms``) and of the whole `deliver` call. SQLite in
a temporary folder by default; ``--postgres`` uses a fresh database (dropped after).

A script, not a test: numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from common import REPO_ROOT, load_average, scratch_database

from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.base import utcnow
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.db.webhooks import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from deepscreen.webhooks import VERDICT_CREATED, emit, new_secret
from worker.webhooks import deliver


def example_receiver() -> ModuleType:
    path = REPO_ROOT / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def database(postgres: bool, folder: Path) -> Iterator[str]:
    if not postgres:
        yield f"sqlite:///{folder / 'bench.sqlite3'}"
        return
    with scratch_database() as url:
        yield url


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="deliveries per run (default: 500)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args(argv)

    kit = example_receiver()
    secret = new_secret()
    handled: list[str] = []
    receiver = kit.Receiver([secret], lambda event: handled.append(event["id"]))
    server = kit.make_server(receiver, port=0)
    server.RequestHandlerClass.log_message = lambda *_a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks"

    with tempfile.TemporaryDirectory() as tmp, database(args.postgres, Path(tmp)) as db_url:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            database_url=db_url,
            webhook_allow_networks=("127.0.0.0/8",),
        )
        migrate.upgrade(settings)
        engine = make_engine(settings, pool_size=max(args.threads) + 2)
        factory = make_session_factory(engine)
        with session_scope(factory) as session:
            session.add(WebhookEndpoint(url=url, secret=secret, event_types=[VERDICT_CREATED]))
        backend = "PostgreSQL" if args.postgres else "SQLite"
        print(f"{args.n} deliveries per run to {url}, {backend}; load {load_average()}")
        for threads in args.threads:
            with session_scope(factory) as session:
                now = utcnow()
                ids = [
                    i
                    for n in range(args.n)
                    for i in emit(session, VERDICT_CREATED, {"image_id": n, "x": "y"}, now=now)
                ]

            def one(delivery_id: int) -> float:
                started = time.perf_counter()
                outcome = deliver(delivery_id, settings=settings, session_factory=factory)
                elapsed = (time.perf_counter() - started) * 1000
                if outcome.result != "succeeded":
                    raise RuntimeError(f"delivery {delivery_id}: {outcome}")
                return elapsed

            before = len(handled)
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                durations = list(pool.map(one, ids))
            wall = time.perf_counter() - started
            with session_scope(factory) as session:
                rows = [session.get_one(WebhookDelivery, i) for i in ids]
                latencies = [r.last_latency_ms or 0.0 for r in rows]
                assert all(r.status is DeliveryStatus.SUCCEEDED for r in rows)
            assert len(handled) - before == args.n, "every event handled once"
            print(
                f"threads={threads}: {args.n / wall:7.1f} deliveries/s "
                f"({wall:.2f} s); HTTP round trip p50 {statistics.median(latencies):.1f} ms, "
                f"p95 {percentile(latencies, 0.95):.1f} ms; whole deliver() p50 "
                f"{statistics.median(durations):.1f} ms, p95 {percentile(durations, 0.95):.1f} ms"
            )
        engine.dispose()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
