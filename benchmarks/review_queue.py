"""How long the dashboard's review pages take with 100k images in PostgreSQL.

Run from the repository root, with PostgreSQL up::

    python benchmarks/review_queue.py [--images 100000] [--repeat 20]

Fills a fresh database ``deepscreen_bench_<random>`` (dropped at the end) with N
images, one prediction and one verdict each (the review policy decides which are
open: about a third here), then times full requests through the Flask app (routing,
queries, template rendering; no network): the queue's first page, a page 1,000 rows
deep (keyset), filtered pages, the image list, an item page, and prints the plan
PostgreSQL uses for the queue query.

A script, not a test: numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from common import add_service_options, scratch_database
from sqlalchemy import insert, text

from dashboard import create_app
from dashboard.auth import new_user
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus, ModelVersion, Prediction
from deepscreen.db.moderation import Role, Verdict
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.review import review_need

CHUNK = 5000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20, help="requests per measurement")
    add_service_options(parser, redis=False)
    args = parser.parse_args(argv)
    with scratch_database(args.postgres_url) as url, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp), database_url=url, secret_key="bench" * 8, cookie_secure=False
        )
        migrate.upgrade(settings)
        started = time.perf_counter()
        fill(settings, args.images)
        print(f"filled {args.images} images in {time.perf_counter() - started:.1f} s")
        measure(settings, args.repeat, middle=max(1, args.images // 2))
    return 0


def fill(settings: Settings, n: int) -> None:
    engine = make_engine(settings)
    rng = random.Random(0)
    now = utcnow()
    with session_scope(make_session_factory(engine)) as session:
        model = ModelVersion(sha256="cd" * 32, name="bench", location="-", card={}, active=True)
        session.add(model)
        session.add(new_user("bench", Role.MODERATOR, "bench-password"))
        session.flush()
        model_id = model.id
    with engine.begin() as conn:
        for start in range(0, n, CHUNK):
            ids = range(start + 1, min(n, start + CHUNK) + 1)
            created = {i: now - timedelta(seconds=n - i) for i in ids}
            conn.execute(
                insert(Image),
                [
                    {
                        "id": i,
                        "bucket": "bench",
                        "key": f"incoming/{i:07d}.jpg",
                        "etag": f"{i:032x}",
                        "size": 20_000,
                        "content_type": "image/jpeg",
                        "width": 256,
                        "height": 256,
                        "status": ImageStatus.DONE,
                        "source": ImageSource.SCAN,
                        "attempts": 1,
                        "created_at": created[i],
                        "updated_at": created[i],
                        "finished_at": created[i],
                    }
                    for i in ids
                ],
            )
            scores = {i: rng.betavariate(0.6, 0.9) for i in ids}
            conn.execute(
                insert(Prediction),
                [
                    {
                        "id": i,
                        "image_id": i,
                        "model_version_id": model_id,
                        "score": scores[i],
                        "label": "fake" if scores[i] >= 0.5 else "real",
                        "threshold": 0.5,
                        "inference_ms": 5.0,
                        "created_at": created[i],
                    }
                    for i in ids
                ],
            )
            rows = []
            for i in ids:
                need = review_need(image_id=i, score=scores[i], threshold=0.5, settings=settings)
                label = "fake" if scores[i] >= 0.5 else "real"
                rows.append(
                    {
                        "image_id": i,
                        "prediction_id": i,
                        "model_version_id": model_id,
                        "score": scores[i],
                        "model_label": label,
                        "final_label": label,
                        "source": ImageSource.SCAN,
                        "state": need.state,
                        "reason": need.reason,
                        "priority": need.priority,
                        "image_created_at": created[i],
                        "created_at": created[i],
                        "updated_at": created[i],
                    }
                )
            conn.execute(insert(Verdict), rows)
        for table in ("images", "predictions", "verdicts"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {n})"))
        conn.execute(text("ANALYZE"))
        states = conn.execute(text("SELECT state, count(*) FROM verdicts GROUP BY state")).all()
        print("verdicts by state:", dict(states))
    engine.dispose()


def measure(settings: Settings, repeat: int, middle: int) -> None:
    app = create_app(settings)
    client = app.test_client()
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    client.post(
        "/login",
        data={"username": "bench", "password": "bench-password", "csrf_token": token.group(1)},
    )
    deep = first_page_cursor(client, pages=20)  # 20 pages x 50 rows deep
    targets = [
        ("queue, first page", "/"),
        ("queue, page 21 (keyset)", deep),
        ("queue, fakes with score >= 0.9", "/?label=fake&score_min=0.9"),
        ("queue, registered on one day", f"/?since={utcnow().date()}&until={utcnow().date()}"),
        ("image list, first page", "/images"),
        ("image list, real only", "/images?label=real"),
        ("item page", f"/images/{middle}"),
    ]
    print(f"\n{'page':42} {'p50 ms':>8} {'p95 ms':>8}  (n={repeat})")
    for what, path in targets:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code)
        times.sort()
        p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
        print(f"{what:42} {statistics.median(times):8.1f} {p95:8.1f}")
    engine = make_engine(settings)
    with engine.connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN ANALYZE SELECT * FROM verdicts JOIN images ON images.id = verdicts.image_id"
                " WHERE verdicts.state = 'open'"
                " ORDER BY verdicts.priority DESC, verdicts.image_created_at, verdicts.id"
                " LIMIT 51"
            )
        ).all()
    engine.dispose()
    print("\nqueue query plan:")
    for (line,) in plan:
        print("  " + line)


def first_page_cursor(client, pages: int) -> str:  # type: ignore[no-untyped-def]
    url = "/"
    for _ in range(pages):
        match = re.search(r'href="([^"]+)" rel="next"', client.get(url).text)
        assert match, "fewer pages than expected"
        url = match.group(1).replace("&amp;", "&")
    return url


if __name__ == "__main__":
    sys.exit(main())
