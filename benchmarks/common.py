"""Shared by the benchmark scripts: where the shared images are, and how to pick them."""

from __future__ import annotations

import csv
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


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
