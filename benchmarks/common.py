"""Shared by the benchmark scripts: where the shared images are and how to pick them,
the service options, a scratch PostgreSQL database and the production stack on it."""

from __future__ import annotations

import argparse
import csv
import io
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from deepscreen.config import Settings
from deepscreen.seaweedfs import LocalSeaweedFS

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
#: A PostgreSQL maintenance database, to create the benchmarks' own databases in.
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def load_shared(n: int) -> list[bytes]:
    """Bytes of ``n`` images spread evenly over ../shared/data/MANIFEST.csv (fewer if
    it holds fewer; none when it is absent)."""
    manifest = SHARED_DATA / "MANIFEST.csv"
    if not manifest.is_file() or n <= 0:
        return []
    with manifest.open(newline="") as fh:
        paths = [row["path"] for row in csv.DictReader(fh)]
    step = max(1, len(paths) // n)
    return [(SHARED_DATA / p).read_bytes() for p in paths[::step][:n]]


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def generated_jpegs(n: int, side: int = 256) -> list[bytes]:
    """``n`` smooth random JPEGs of ``side`` pixels, for a clone without ../shared."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def benchmark_images(n: int) -> tuple[list[bytes], str]:
    """``n`` images from ../shared/data, or generated ones without it; and which."""
    images = load_shared(n)
    if images:
        return images, "../shared/data"
    return generated_jpegs(n), "generated 256px JPEGs"


def add_service_options(parser: argparse.ArgumentParser, *, redis: bool = True) -> None:
    """``--redis-url`` (when ``redis``) and ``--postgres-url``."""
    if redis:
        parser.add_argument(
            "--redis-url",
            default="redis://127.0.0.1:6379/14",
            help="broker; this database is FLUSHED (default redis://127.0.0.1:6379/14)",
        )
    parser.add_argument(
        "--postgres-url",
        default=POSTGRES_ADMIN_URL,
        help="a PostgreSQL maintenance database, to create the benchmark's database",
    )


@contextmanager
def scratch_database(admin_url: str = POSTGRES_ADMIN_URL) -> Iterator[str]:
    """A new empty PostgreSQL database next to ``admin_url``'s; its URL. Dropped after."""
    name = f"deepscreen_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def production_stack(
    args: argparse.Namespace, notification: str | None = None, **settings: object
) -> Iterator[tuple[Settings, Path]]:
    """A temporary folder, SeaweedFS in it and a scratch database, with the settings a
    benchmark's ``args.workers`` single-threaded workers use on them (plus ``settings``)."""
    with tempfile.TemporaryDirectory(prefix="deepscreen-bench-") as tmp:
        root = Path(tmp)
        with (
            LocalSeaweedFS.start(root / "seaweedfs", notification=notification) as s3,
            scratch_database(args.postgres_url) as database_url,
        ):
            yield (
                Settings(
                    data_dir=root / "data",
                    database_url=database_url,
                    broker_url=args.redis_url,
                    inference_threads=1,
                    worker_concurrency=args.workers,
                    **settings,  # type: ignore[arg-type]
                    **s3.settings_values(),
                ),
                root,
            )
