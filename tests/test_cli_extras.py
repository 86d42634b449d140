"""The `deepscreen` command lists every subcommand whatever is installed; one whose
extra is missing says which extra to install and exits 2.

A missing extra is simulated in a child process whose import system refuses the
extra's modules (a meta-path finder raising ModuleNotFoundError, as for a package that
is not installed), so nothing is uninstalled.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: Runs `deepscreen` with the modules named in argv[1] (comma-separated) unimportable.
BLOCKED_RUN = """
import importlib.abc, sys
blocked = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from deepscreen.cli import main
sys.exit(main(sys.argv[2:]))
"""

TRAINING = "tensorflow,keras,sklearn,matplotlib"
DASHBOARD = "flask,gunicorn"
EVERY_COMMAND = ("classify", "run", "train", "evaluate", "export", "dashboard", "create-user")


def deepscreen(blocked: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, blocked, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_command_is_listed_without_the_training_and_dashboard_extras() -> None:
    result = deepscreen(f"{TRAINING},{DASHBOARD}", "--help")
    assert result.returncode == 0, result.stderr
    for command in EVERY_COMMAND:
        assert f"    {command}" in result.stdout, command


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        (TRAINING, ["train", "--data", "x", "--out", "y"], "training"),
        (TRAINING, ["evaluate", "--data", "x"], "training"),
        (TRAINING, ["export", "--keras", "m.keras", "--data", "x", "--out", "y"], "training"),
        (DASHBOARD, ["dashboard"], "dashboard"),
        (DASHBOARD, ["create-user", "alice", "--role", "admin"], "dashboard"),
    ],
)
def test_a_command_without_its_extra_names_it_and_exits_2(
    blocked: str, args: list[str], extra: str
) -> None:
    result = deepscreen(blocked, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"pip install 'deepscreen[{extra}]'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "invalid choice" not in result.stderr


def test_a_command_whose_extra_is_missing_still_has_help() -> None:
    result = deepscreen(DASHBOARD, "dashboard", "--help")
    assert result.returncode == 0, result.stderr
    assert "deepscreen[dashboard]" in result.stdout
