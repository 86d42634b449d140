"""Training commands restart themselves on tcmalloc when it is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from services import unavailable

from training.allocator import LIBRARY, find_tcmalloc, preload_value

PROBE = (
    "import sys; from training.allocator import allocator_name, restart_on_tcmalloc; "
    "restart_on_tcmalloc(sys.argv[1]); print(allocator_name())"
)


@pytest.fixture
def glibc_env() -> dict[str, str]:
    """This environment without LD_PRELOAD, where tcmalloc is installed to restart on."""
    if find_tcmalloc() is None:
        unavailable(f"{LIBRARY} is not installed (apt-get install libtcmalloc-minimal4)")
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _probe(choice: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, choice],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_preload_puts_the_library_first_and_keeps_the_rest() -> None:
    lib = Path("/usr/lib/x86_64-linux-gnu") / LIBRARY
    assert preload_value(lib, "") == str(lib)
    assert preload_value(lib, "/opt/a.so:/opt/b.so") == f"{lib} /opt/a.so /opt/b.so"
    # An older copy of the same library is not preloaded twice
    assert preload_value(lib, f"/usr/local/lib/{LIBRARY} /opt/a.so") == f"{lib} /opt/a.so"


def test_find_looks_in_the_given_folders(tmp_path: Path) -> None:
    assert find_tcmalloc([str(tmp_path / "*")]) is None
    (tmp_path / "x86_64-linux-gnu").mkdir()
    (tmp_path / "x86_64-linux-gnu" / LIBRARY).write_bytes(b"")
    assert find_tcmalloc([str(tmp_path / "*-linux-gnu")]) == tmp_path / "x86_64-linux-gnu" / LIBRARY


def test_a_process_restarts_on_tcmalloc_unless_told_not_to(glibc_env: dict[str, str]) -> None:
    # Given a fresh interpreter started with glibc's malloc,
    # when it asks for tcmalloc it runs on it after the restart,
    assert _probe("tcmalloc", glibc_env) == "tcmalloc"
    # and when the setting says `system`, it keeps glibc's malloc
    assert _probe("system", glibc_env) == "system"


@pytest.mark.parametrize("allocator", ["tcmalloc", "system"])
def test_the_cli_honours_the_setting(allocator: str, glibc_env: dict[str, str]) -> None:
    env = {**glibc_env, "DEEPSCREEN_TRAINING_ALLOCATOR": allocator}
    # A training command that fails at once (no such Keras file) still restarts first
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepscreen.cli",
            "-v",
            "export",
            "--keras",
            "/missing.keras",
            "--out",
            "/nonexistent/out",
            "--data",
            "tree:/nonexistent",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert ("restarting on tcmalloc" in done.stderr) == (allocator == "tcmalloc")
