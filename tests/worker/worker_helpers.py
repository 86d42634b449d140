"""Helpers of the worker tests (imported by name, unlike fixtures)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from deepscreen.commands.ingest import ingest
from deepscreen.storage import LocalStore
from worker.runtime import Runtime


def register(runtime: Runtime, folder: Path) -> list[int]:
    """Ingest ``folder``, collecting instead of sending; the new image ids."""
    new_ids: list[int] = []

    def collect(ids: Sequence[int]) -> int:
        new_ids.extend(ids)
        return 0

    ingest(
        LocalStore(folder),
        settings=runtime.settings,
        session_factory=runtime.session_factory,
        enqueue=collect,
    )
    return sorted(new_ids)
