"""The layering rules hold: kernel below the apps, TensorFlow only in training."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: install the dev extra")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_serving_and_cli_start_without_tensorflow() -> None:
    # Given a fresh interpreter, when the serving class, the CLI and every command
    # registration load, then TensorFlow has not been imported.
    code = (
        "import sys; import deepscreen.inference, deepscreen.cli; "
        "deepscreen.cli.build_parser(); "
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
