"""The test run stays free of a third-party warning it cannot fix: Keras 3's
``Variable.__array__`` takes no ``copy`` argument, so NumPy 2 warns once per weight
whenever Keras converts weights (``model.save``), about 2,100 times a full run. The
filter lives in pyproject.toml's pytest settings; this runs pytest with them on a
model save and expects a clean summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SAVE = """
def test_save(tmp_path):
    import keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
"""


def test_saving_a_keras_model_warns_nothing_under_the_projects_pytest_settings(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_save.py").write_text(SAVE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_save.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "warning" not in summary, result.stdout
