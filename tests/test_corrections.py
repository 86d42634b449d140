"""Moderator corrections: which decisions count, the CSV manifest, the export command,
and the new-corrections trigger of retraining (on the embedded queue), on both
database backends."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from review_seed import OLD_MODEL_SHA, Item, seed_reviews
from sample_images import image_bytes
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from deepscreen import taskqueue
from deepscreen.cli import main
from deepscreen.config import Settings
from deepscreen.corrections import (
    CORRECTIONS_SOURCE,
    MANIFEST_COLUMNS,
    corrections,
    count_corrections,
    object_url,
    write_manifest,
)
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import Action
from deepscreen.db.retraining import RunStatus, RunTrigger, TrainingRun
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.retraining import check_retrain, fail_interrupted_runs, request_run

O, F, C, N = Action.OVERRIDE, Action.FLAG, Action.CONFIRM, Action.NOTE


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """A fresh migrated database per test (the trigger commits), embedded queue in tmp."""
    from db_fixtures import migrated_database

    url = migrated_database(request, tmp_path_factory)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        retrain_data=(f"tree:{tmp_path / 'base'}",),
        retrain_min_corrections=2,
    )


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


def items(prefix: str = "") -> list[Item]:
    """Old-model scores (threshold 0.5) and what moderators then decided."""
    spec: list[tuple[str, float, list[tuple[Action, str | None, str]]]] = [
        ("a.png", 0.9, [(O, "real", "alice")]),  # model said fake: corrected
        ("b.png", 0.2, [(F, "fake", "bob")]),  # model said real: flagged
        ("c.png", 0.8, [(C, "fake", "alice")]),  # confirmed: no correction
        ("d.png", 0.7, [(O, "fake", "alice")]),  # "override" to the model's label: none
        ("e.png", 0.3, [(O, "fake", "bob"), (C, "real", "alice")]),  # withdrawn later
        ("f.png", 0.6, [(F, "real", "bob"), (O, "real", "carol")]),  # latest one counts
        ("g.png", 0.4, [(F, "real", "bob")]),  # any flag counts
        ("dir/h i.png", 0.1, [(N, None, "bob"), (Action.ESCALATE, None, "bob")]),  # no label
    ]
    return [
        Item(prefix + key, image_bytes(i, "PNG"), score, decisions)
        for i, (key, score, decisions) in enumerate(spec)
    ]


def test_corrections_are_latest_decisions_that_disagree_with_the_model(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    # Given decisions of every kind on eight images
    (tmp_path / "bucket" / "dir").mkdir(parents=True)
    seeded = seed_reviews(factory, settings, tmp_path / "bucket", items())
    # When the corrections are read
    with session_scope(factory) as session:
        found = corrections(session=session)
        assert count_corrections(session=session) == len(found)
    # Then the overrides that disagree, the flags, and only the latest decision count
    by_key = {c.key: c for c in found}
    assert list(by_key) == ["a.png", "b.png", "f.png", "g.png"]
    assert {k: c.label for k, c in by_key.items()} == {
        "a.png": "real",
        "b.png": "fake",
        "f.png": "real",
        "g.png": "real",
    }
    a, f = by_key["a.png"], by_key["f.png"]
    assert (a.reviewer, a.action, a.model_label, a.score) == ("alice", "override", "fake", 0.9)
    assert a.model_version == OLD_MODEL_SHA and a.image_id == seeded.image_ids["a.png"]
    assert (f.reviewer, f.review_id) == ("carol", seeded.review_ids["f.png"][-1])
    assert a.url == (tmp_path / "bucket" / "a.png").as_uri()
    assert a.reviewed_at.tzinfo is not None
    # And only corrections decided after a review id are "new"
    with session_scope(factory) as session:
        after = corrections(session=session, after_review_id=seeded.review_ids["b.png"][-1])
        assert [c.key for c in after] == ["f.png", "g.png"]
        assert count_corrections(session=session, after_review_id=found[-1].review_id) == 0


def test_object_urls() -> None:
    assert object_url("images", "a/b c.jpg") == "s3://images/a/b c.jpg"
    assert object_url("file:///srv/x%20y", "a/b c.jpg") == "file:///srv/x%20y/a/b%20c.jpg"


def test_manifest_and_export_command(
    settings: Settings,
    factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "bucket" / "dir").mkdir(parents=True)
    seed_reviews(factory, settings, tmp_path / "bucket", items())
    with session_scope(factory) as session:
        found = corrections(session=session)
    out = tmp_path / "manifests" / "corrections.csv"
    assert write_manifest(found, out) == 4
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert [r["label"] for r in rows] == ["real", "fake", "real", "real"]
    assert {r["source"] for r in rows} == {CORRECTIONS_SOURCE}
    assert rows[0]["path"] == (tmp_path / "bucket" / "a.png").as_uri()
    assert rows[0]["reviewer"] == "alice" and rows[0]["model_version"] == OLD_MODEL_SHA
    assert float(rows[0]["score"]) == 0.9 and rows[0]["model_label"] == "fake"
    # The command writes the same file
    for name in ("DEEPSCREEN_DATA_DIR", "DEEPSCREEN_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEEPSCREEN_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("DEEPSCREEN_DATA_DIR", str(settings.data_dir))
    assert main(["corrections", "export", str(tmp_path / "cli.csv")]) == 0
    assert "4 corrections written" in capsys.readouterr().out
    assert (tmp_path / "cli.csv").read_text() == out.read_text()
    last = str(found[1].review_id)
    assert (
        main(["corrections", "export", str(tmp_path / "new.csv"), "--after-review-id", last]) == 0
    )
    assert len((tmp_path / "new.csv").read_text().splitlines()) == 3


def _messages(settings: Settings) -> list[dict[str, str]]:
    folder = settings.queue_dir / "messages"
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        headers = json.loads(path.read_text())["headers"]
        found.append({"task": headers["task"], "args": headers["argsrepr"]})
    return found


def test_check_retrain_queues_one_run_per_batch_of_new_corrections(
    settings: Settings, factory: sessionmaker[Session], tmp_path: Path
) -> None:
    app = taskqueue.create_celery(settings)

    def send(run_id: int) -> str:
        return taskqueue.send(app, taskqueue.RETRAIN, args=["corrections", run_id])

    def check() -> int | None:
        return check_retrain(settings=settings, session_factory=factory, send=send)

    # Given one correction, with two needed: nothing is queued
    seed_reviews(factory, settings, tmp_path / "b1", [items("one-")[0]])
    assert check() is None and _messages(settings) == []
    # When a second correction arrives, one run is queued and its task sent
    seed_reviews(factory, settings, tmp_path / "b2", [items("two-")[1]])
    run_id = check()
    assert run_id is not None
    assert _messages(settings) == [
        {"task": taskqueue.RETRAIN, "args": f"['corrections', {run_id}]"}
    ]
    # Then checking again, while it is queued, queues nothing more
    assert check() is None and len(_messages(settings)) == 1
    with session_scope(factory) as session:
        runs = list(session.scalars(select(TrainingRun)))
        assert [(r.trigger, r.status) for r in runs] == [(RunTrigger.CORRECTIONS, RunStatus.QUEUED)]
        # When the run has used those corrections
        runs[0].status, runs[0].last_review_id = RunStatus.REGISTERED, 10**6
    # Then they no longer count, so no new run starts
    assert check() is None and len(_messages(settings)) == 1


def test_check_retrain_sends_a_run_whose_message_was_lost_again(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    sent: list[int] = []
    with session_scope(factory) as session:
        run_id = request_run(session=session, trigger=RunTrigger.MANUAL).id

    def check() -> int | None:
        return check_retrain(settings=settings, session_factory=factory, send=sent.append)

    # A fresh queued run is left alone; one queued for longer than reconcile_after is resent
    assert check() is None
    later = utcnow() + timedelta(seconds=settings.reconcile_age + 1)
    off = dataclasses.replace(settings, retrain_data=())  # retraining not configured
    assert check_retrain(settings=off, session_factory=factory, send=sent.append, now=later) is None
    assert check_retrain(settings=settings, session_factory=factory, send=sent.append, now=later)
    assert sent == [run_id]


def test_runs_left_running_are_failed_when_the_training_worker_starts(
    factory: sessionmaker[Session],
) -> None:
    with session_scope(factory) as session:
        run = request_run(session=session, trigger=RunTrigger.SCHEDULE)
        run.status = RunStatus.RUNNING
    assert fail_interrupted_runs(session_factory=factory) == [run.id]
    with session_scope(factory) as session:
        again = session.get_one(TrainingRun, run.id)
        assert again.status is RunStatus.FAILED and "interrupted" in (again.error or "")
