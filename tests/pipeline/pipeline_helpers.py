"""Helpers for the end-to-end tests: images, environments, subprocesses, polling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from deepscreen.db import queries
from deepscreen.db.models import Image, ImageStatus, Prediction
from deepscreen.db.session import make_session_factory, session_scope

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**settings: Any) -> dict[str, str]:
    """This process's environment without DEEPSCREEN_* variables, plus ``settings``
    (``data_dir`` -> ``DEEPSCREEN_DATA_DIR``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSCREEN_")}
    env.update({f"DEEPSCREEN_{k.upper()}": str(v) for k, v in settings.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


def deepscreen(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``deepscreen ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "deepscreen.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Process:
    """A ``deepscreen`` subprocess in its own session, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # Tests started in the background (nohup, `cmd &`) have SIGINT ignored, which
            # children inherit, and Python then installs no Ctrl-C handler in them:
            # handled here, it is reset to the default at exec.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deepscreen.cli", *args],
                env=env,
                cwd=log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (Celery's warm shutdown), then SIGKILL its process group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill_leftovers()
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def kill_group(self) -> None:
        """SIGKILL the process and its pool children at once: a crash, not a shutdown."""
        self.kill_leftovers()
        self.proc.wait(30)

    def kill_leftovers(self) -> None:
        # Pool children are in the session the worker leads (pgid == its pid).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.25
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def ingest_bucket(bucket: str, env: dict[str, str], cwd: Path) -> str:
    """``deepscreen ingest s3://BUCKET/incoming/``, which must succeed; its output."""
    ingest = deepscreen("ingest", f"s3://{bucket}/incoming/", env=env, cwd=cwd)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    return ingest.stdout


def wait_decided(
    engine: Engine, bucket: str, worker: Process, *, timeout: float, what: str, left: int = 0
) -> None:
    """Wait until at most ``left`` images of ``bucket`` are pending, or ``worker`` exits."""
    wait_for(
        lambda: pending(engine, bucket) <= left or worker.proc.poll() is not None,
        timeout=timeout,
        what=what,
    )


def verdict_counts(engine: Engine, bucket: str) -> dict[ImageStatus, int]:
    """Images of ``bucket`` by status."""
    with session_scope(make_session_factory(engine)) as session:
        return queries.count_images_by_status(session=session, buckets=[bucket])


def pending(engine: Engine, bucket: str) -> int:
    """Images of ``bucket`` still queued or processing."""
    counts = verdict_counts(engine, bucket)
    return counts[ImageStatus.QUEUED] + counts[ImageStatus.PROCESSING]


def bucket_results(engine: Engine, bucket: str) -> tuple[list[Image], dict[int, int]]:
    """The images of ``bucket`` and, per image id, how many predictions it has."""
    with session_scope(make_session_factory(engine)) as session:
        images = list(session.scalars(select(Image).where(Image.bucket == bucket)))
        per_image = session.execute(
            select(Prediction.image_id, func.count())
            .join(Image)
            .where(Image.bucket == bucket)
            .group_by(Prediction.image_id)
        ).all()
    return images, {image_id: int(n) for image_id, n in per_image}
