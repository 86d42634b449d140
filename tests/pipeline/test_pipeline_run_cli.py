"""What a first-time user meets with ``deepscreen run``: ``--serve`` started from a
folder that holds a folder named ``deepscreen`` (the clone's parent folder) or
``dashboard`` (the dashboard subprocess imports the installed packages, not those
folders), a file given instead of a folder, and a summary too long to list."""

from __future__ import annotations

import http.client
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import clean_env, deepscreen, wait_for
from sample_images import generated_images
from services import free_port

DEADLINE = 300


def status(port: int, path: str) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def test_run_serve_from_the_clones_parent_folder(tmp_path: Path) -> None:
    script = shutil.which("deepscreen", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.fail("the deepscreen console script is not installed beside this Python")
    # Given a working folder holding the clone (a folder named deepscreen, whose own
    # deepscreen/ and dashboard/ folders are not packages from here) and some photos
    parent = tmp_path / "parent"
    for shadow in ("deepscreen/deepscreen", "deepscreen/dashboard", "dashboard"):
        (parent / shadow).mkdir(parents=True)
    photos = parent / "photos"
    photos.mkdir()
    for name, data in generated_images(1).items():
        (photos / name).write_bytes(data)
    env = clean_env(data_dir=tmp_path / "data", inference_threads=1)
    env.pop("PYTHONPATH")  # as a user's shell has it
    port = free_port()
    log = tmp_path / "run.log"
    # When the console script runs the folder with --serve from there
    with log.open("ab") as out:
        run = subprocess.Popen(
            [script, "run", "photos", "--serve", str(port)],
            cwd=parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: status(port, "/healthz") == 200 or run.poll() is not None,
            timeout=DEADLINE,
            what="the dashboard served by deepscreen run",
        )
        # Then the dashboard answers on the results
        assert run.poll() is None, log.read_text(errors="replace")
        assert status(port, "/") == 302
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            try:
                run.wait(60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait(30)
    assert "ImportError" not in log.read_text(errors="replace")


def test_run_on_a_file_says_it_wants_a_folder(tmp_path: Path) -> None:
    [(name, data)] = generated_images(1).items()
    (tmp_path / name).write_bytes(data)
    env = clean_env(data_dir=tmp_path / "data")
    result = deepscreen("run", name, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is a file, not a folder" in result.stderr and "deepscreen classify" in result.stderr
    missing = deepscreen("run", "nowhere", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "no such folder" in missing.stderr


def test_the_summary_says_how_to_list_the_images_it_leaves_out(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, data in generated_images(3).items():
        (photos / name).write_bytes(data)
    env = clean_env(data_dir=tmp_path / "data", inference_threads=1)
    # When more images than --max-rows were classified, none failed
    result = deepscreen("run", "photos", "--max-rows", "1", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Then the summary says how many it left out and how to list them
    assert "(3 more images not listed; --max-rows 3 lists them)" in result.stdout, result.stdout
