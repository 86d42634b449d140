"""Recovery settings (issue 14, item 6): the broker's visibility timeout and the
reconciler's age follow the task time limits, the defaults bring a killed worker's
images back within two minutes, and inconsistent values stop a command at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepscreen.config import TASK_RETRY_MAX_DELAY, Settings
from deepscreen.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

#: The issue's bound, in seconds, from a worker's death to its images' verdicts.
RECOVERY_BOUND = 120
#: Seconds of it left for the classification itself, after the reconciler's run.
CLASSIFY_ALLOWANCE = 20


def test_the_visibility_timeout_and_the_reconcile_age_follow_the_time_limits() -> None:
    # Given only the time limits raised, for long tasks
    settings = Settings.from_env(
        {
            "DEEPSCREEN_BROKER_URL": "redis://127.0.0.1:6379/0",
            "DEEPSCREEN_TASK_SOFT_TIME_LIMIT": "3000",
            "DEEPSCREEN_TASK_TIME_LIMIT": "4000",
        }
    )
    # Then Redis redelivers only after the longest task plus the longest retry wait,
    # and the reconciler leaves images alone while their task may still run
    assert settings.visibility_timeout > 4000 + TASK_RETRY_MAX_DELAY
    assert settings.broker_transport_options["visibility_timeout"] == settings.visibility_timeout
    assert 4000 < settings.reconcile_age < settings.visibility_timeout


def test_the_defaults_bring_a_killed_workers_images_back_within_two_minutes() -> None:
    # A killed worker's image is processing since its claim; the reconciler takes it
    # on its first run after reconcile_age, which leaves the rest for classifying it.
    settings = Settings()
    assert settings.reconcile_age > settings.task_time_limit > settings.task_soft_time_limit
    worst = settings.reconcile_age + settings.reconcile_interval
    assert worst <= RECOVERY_BOUND - CLASSIFY_ALLOWANCE
    # Without beat, Redis brings its messages back after the visibility timeout.
    assert settings.visibility_timeout > settings.task_time_limit + TASK_RETRY_MAX_DELAY


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"task_soft_time_limit": 50, "task_time_limit": 60, "broker_visibility_timeout": 90},
            (
                "DEEPSCREEN_BROKER_VISIBILITY_TIMEOUT=90 must be greater than "
                "DEEPSCREEN_TASK_TIME_LIMIT=60 plus the longest retry wait"
            ),
        ),
        (
            {"task_time_limit": 600, "task_soft_time_limit": 500, "reconcile_after": 300},
            "DEEPSCREEN_RECONCILE_AFTER=300 must be greater than DEEPSCREEN_TASK_TIME_LIMIT=600",
        ),
    ],
)
def test_values_set_against_the_time_limits_are_refused(
    values: dict[str, int], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**values)  # type: ignore[arg-type]


def test_values_set_consistently_are_kept() -> None:
    settings = Settings(broker_visibility_timeout=7200, reconcile_after=600)
    assert (settings.visibility_timeout, settings.reconcile_age) == (7200, 600)


def test_the_worker_refuses_to_start_with_inconsistent_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSCREEN_")}
    env.update(
        PYTHONPATH=str(ROOT),
        DEEPSCREEN_DATA_DIR=str(tmp_path),
        DEEPSCREEN_BROKER_URL="redis://127.0.0.1:1/0",
        DEEPSCREEN_BROKER_VISIBILITY_TIMEOUT="100",
    )
    run = subprocess.run(
        [sys.executable, "-m", "deepscreen.cli", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode != 0
    assert "DEEPSCREEN_BROKER_VISIBILITY_TIMEOUT=100 must be greater than" in run.stderr
