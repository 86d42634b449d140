"""Retraining on tiny data with the tiny model: corrections read from their bucket,
their weight, a run that passes the gate and is published (auto-promoted or not), a
worse candidate the gate refuses, and a real ``deepscreen training-worker`` that
serves a run sent by task name on the embedded queue."""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from review_seed import Item, SeededReviews, seed_reviews
from sample_images import synthetic_face
from sqlalchemy import select
from tiny_model import RETRAIN_RECIPE

from deepscreen import taskqueue
from deepscreen.cli import main
from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.models import ModelStatus, ModelVersion
from deepscreen.db.moderation import Action, AuditEvent
from deepscreen.db.retraining import RunStatus, RunTrigger, TrainingRun
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.imaging import Preprocessing
from deepscreen.registry import activate, publish
from deepscreen.retraining import PENDING, request_run
from training.data import Sample, load_pixels, read_manifest
from training.hparams import HParams

ROOT = Path(__file__).resolve().parents[2]


def _png(fake: bool, seed: int) -> bytes:
    buf = io.BytesIO()
    synthetic_face(np.random.default_rng(seed), fake).save(buf, "PNG")
    return buf.getvalue()


def correction_items() -> list[Item]:
    """Twelve images the old model got wrong: six reals it called fake (overridden) and
    six fakes it called real (flagged)."""
    items = []
    for i in range(6):
        items.append(
            Item(f"real{i}.png", _png(False, 100 + i), 0.8, [(Action.OVERRIDE, "real", "ann")])
        )
        items.append(Item(f"fake{i}.png", _png(True, 200 + i), 0.2, [(Action.FLAG, "fake", "bo")]))
    return items


def make_settings(folder: Path, tree: Path, *recipe: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": folder / "data",
        "retrain_data": (f"tree:{tree}",),
        "retrain_weights": "none",
        "retrain_hparams": RETRAIN_RECIPE + recipe,
        "inference_threads": 1,
    }
    values.update(overrides)
    settings = Settings(**values)
    migrate.upgrade(settings)
    return settings


def seeded(settings: Settings, folder: Path) -> SeededReviews:
    engine = make_engine(settings)
    try:
        return seed_reviews(make_session_factory(engine), settings, folder, correction_items())
    finally:
        engine.dispose()


@dataclass
class State:
    runs: list[TrainingRun]
    versions: list[ModelVersion]
    events: list[AuditEvent]


def state(settings: Settings) -> State:
    engine = make_engine(settings)
    try:
        with session_scope(make_session_factory(engine)) as s:
            return State(
                list(s.scalars(select(TrainingRun).order_by(TrainingRun.id))),
                list(s.scalars(select(ModelVersion).order_by(ModelVersion.id))),
                list(s.scalars(select(AuditEvent).order_by(AuditEvent.id))),
            )
    finally:
        engine.dispose()


# ------------------------------------------------------------ data, no training


def test_manifest_paths_may_be_bucket_urls(seaweedfs: Any, tmp_path: Path) -> None:
    # Given a manifest naming an object in S3, a file:// URL, a plain path and a
    # vanished object
    from deepscreen.storage import make_s3_client

    settings = seaweedfs.settings(data_dir=tmp_path / "data")
    bucket = f"corrections-{secrets.token_hex(4)}"
    client = make_s3_client(settings)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="in/a b.png", Body=_png(True, 1))
    (tmp_path / "local x.png").write_bytes(_png(False, 2))
    (tmp_path / "rel.png").write_bytes(_png(False, 3))
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,source,weight,reviewer\n"
        f"s3://{bucket}/in/a b.png,fake,corrections,2.5,ann\n"
        f"{(tmp_path / 'local x.png').as_uri()},real,corrections,,ann\n"
        "rel.png,real,,,\n"
        f"s3://{bucket}/gone.png,fake,corrections,,ann\n"
    )
    # When it is read and its pixels loaded
    samples = read_manifest(manifest)
    loaded = load_pixels(samples, Preprocessing(height=32, width=32), settings=settings)
    # Then the object comes from the bucket, files from disk, and the gone one is reported
    assert samples[0].url == f"s3://{bucket}/in/a b.png"
    assert samples[1].path == tmp_path / "local x.png" and samples[2].path == tmp_path / "rel.png"
    assert [s.weight for s in samples] == [2.5, None, None, None]
    assert loaded.pixels.shape == (3, 32, 32, 3) and loaded.labels.tolist() == [1, 0, 0]
    assert len(loaded.failed) == 1 and "ObjectNotFound" in loaded.failed[0][1]


def test_a_correction_counts_its_weight_in_average_base_samples() -> None:
    from training.train import sample_weights

    # Given two sources of different sizes and one correction of weight 3
    base = [Sample(Path(f"a{i}"), i % 2, "big") for i in range(8)]
    base += [Sample(Path(f"b{i}"), i % 2, "small") for i in range(2)]
    fix = Sample(Path("c"), 1, "corrections", weight=3.0)
    hp = HParams()
    w = sample_weights([*base, fix], hp)
    assert w is not None
    # Then sources are balanced among themselves, the correction is not a source of its
    # own, and it weighs 3 average fakes; the mean weight stays 1
    unit = np.mean([w[i] for i, s in enumerate(base) if s.label == 1])
    assert w[-1] == pytest.approx(3 * unit)
    assert sum(w[:8]) == pytest.approx(sum(w[8:10]))
    assert np.mean(w) == pytest.approx(1.0)
    off = HParams(class_weighting=False, balance_sources=False)
    assert sample_weights(base, off) is None
    only = sample_weights([*base, fix], off)
    assert only is not None and only[-1] == pytest.approx(3 * only[0])


# ------------------------------------------------------------------ retraining


@pytest.fixture(scope="module")
def first_run(
    synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, Any, SeededReviews]:
    """One full tiny retraining with no active model: base tree + 12 corrections."""
    from training.retrain import retrain

    folder = tmp_path_factory.mktemp("first")
    # One compiled phase (tracing the graph is most of the cost on a busy machine).
    settings = make_settings(
        folder,
        synthetic_tree,
        "head_epochs=0",
        "fine_tune_epochs=10",
        "fine_tune_learning_rate=0.003",
    )
    reviews = seeded(settings, folder / "bucket")
    started = time.monotonic()
    outcome = retrain(settings, trigger="manual")
    print(f"first retraining run: {time.monotonic() - started:.1f} s")
    return settings, outcome, reviews


@pytest.mark.slow
def test_a_run_registers_a_candidate_that_passes_the_gate(
    first_run: tuple[Settings, Any, SeededReviews],
) -> None:
    settings, outcome, reviews = first_run
    # Then the run passed the gate and registered a candidate, not made it active
    assert outcome.status == "registered", outcome.error or outcome.report
    report = outcome.report
    assert report["passed"] and report["candidate"]["sha256"]
    golden = report["criteria"]["golden"]
    assert golden["active_auc"] is None and golden["min_auc"] == 0.9 and golden["passed"]
    assert "no active model" in golden["reason"] and report["golden"]["n"] == 100
    regression = report["criteria"]["regression"]
    assert regression["n"] == 12 and not regression["vacuous"]
    assert regression["fixed_share"] >= settings.gate_min_fixed_share
    assert report["training"]["corrections"] == 12
    assert report["timings_s"]["total"] > report["wall_time_s"] > 0
    s = state(settings)
    [run] = s.runs
    assert run.status is RunStatus.REGISTERED and run.trigger is RunTrigger.MANUAL
    assert run.gate_report == report and run.corrections == 12
    assert run.last_review_id == max(i for ids in reviews.review_ids.values() for i in ids)
    assert run.started_at and run.finished_at and run.base_model_version_id is None
    [_, version] = s.versions  # the seeded old model, then the candidate
    assert run.candidate_model_version_id == version.id
    assert version.status is ModelStatus.CANDIDATE and not version.active
    assert version.gate_report == report and version.sha256 == report["candidate"]["sha256"]
    # And the artefacts, Keras weights included, are in the registry under their sha256
    folder = settings.data_dir / "registry" / "models" / version.sha256
    names = {p.name for p in folder.iterdir()}
    assert {"model.tflite", "model_card.json", "report.md", "model.weights.h5"} <= names
    card = json.loads((folder / "model_card.json").read_text())
    assert "model.weights.h5" in card["artefacts"]
    assert any(src["name"] == "corrections" for src in card["training"]["sources"])
    assert [(e.username, e.action) for e in s.events] == [("retraining", "model.register")]
    assert not (settings.data_dir / "retraining" / f"run-{run.id}").exists()


def _with_active(settings: Settings, first: Settings) -> int:
    """Publish the first run's candidate into ``settings``' registry and activate it."""
    [_, model] = state(first).versions
    engine = make_engine(settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            source = first.data_dir / "registry" / "models" / model.sha256
            version = publish(source, settings=settings, session=session)
            activate(session, version.id)
            return version.id
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_worse_candidate_is_refused_and_not_published(
    first_run: tuple[Settings, Any, SeededReviews],
    synthetic_tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a good active model and base data whose labels are all swapped, judged on a
    # golden set with the true labels
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    (flipped / "real").symlink_to(synthetic_tree / "fake", target_is_directory=True)
    (flipped / "fake").symlink_to(synthetic_tree / "real", target_is_directory=True)
    settings = make_settings(
        tmp_path,
        flipped,
        # Trained enough to be confidently wrong: a barely trained model scores almost
        # alike, and its export's parity check could refuse it before the gate does.
        "head_epochs=1",
        "fine_tune_epochs=2",
        "min_val_auc=0",
        retrain_golden=f"tree:{synthetic_tree}",
        retrain_from="imagenet",
        retrain_auto_promote=True,
    )
    active_id = _with_active(settings, first_run[0])
    # When `deepscreen retrain` runs
    for name in [n for n in os.environ if n.startswith("DEEPSCREEN_")]:
        monkeypatch.delenv(name)
    for key, value in _env(settings).items():
        monkeypatch.setenv(key, value)
    rc = main(["retrain"])
    # Then the gate refuses the candidate (exit 3), the report says why, and nothing
    # is published: the active model stays, no new version, no new registry folder
    out = capsys.readouterr().out
    assert rc == 3, out
    assert "retraining run 1: refused" in out
    s = state(settings)
    [run] = s.runs
    report = run.gate_report
    assert run.status is RunStatus.REFUSED and report is not None and not report["passed"]
    assert "golden" in report["criteria"], report
    assert not report["criteria"]["golden"]["passed"]
    assert (
        report["criteria"]["golden"]["candidate_auc"] < report["criteria"]["golden"]["active_auc"]
    )
    assert report["golden"]["n"] == 400 and "more than" in report["reasons"][0]
    assert run.candidate_model_version_id is None
    assert [v.id for v in s.versions] == [active_id] and s.versions[0].active
    published = list((settings.data_dir / "registry" / "models").iterdir())
    assert [p.name for p in published] == [s.versions[0].sha256]
    assert s.events == []


def _env(settings: Settings) -> dict[str, str]:
    """The DEEPSCREEN_* variables that rebuild ``settings`` in another process."""
    return {
        "DEEPSCREEN_DATA_DIR": str(settings.data_dir),
        "DEEPSCREEN_DATABASE_URL": settings.database_url,
        "DEEPSCREEN_RETRAIN_DATA": ",".join(settings.retrain_data),
        "DEEPSCREEN_RETRAIN_GOLDEN": settings.retrain_golden,
        "DEEPSCREEN_RETRAIN_WEIGHTS": settings.retrain_weights,
        "DEEPSCREEN_RETRAIN_FROM": settings.retrain_from,
        "DEEPSCREEN_RETRAIN_HPARAMS": ",".join(settings.retrain_hparams),
        "DEEPSCREEN_RETRAIN_AUTO_PROMOTE": str(settings.retrain_auto_promote).lower(),
        "DEEPSCREEN_INFERENCE_THREADS": "1",
    }


@pytest.fixture
def training_worker(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started ``deepscreen training-worker`` processes, stopped after the test."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.mark.slow
def test_a_training_worker_serves_a_run_sent_by_name_and_auto_promotes(
    first_run: tuple[Settings, Any, SeededReviews],
    synthetic_tree: Path,
    tmp_path: Path,
    training_worker: list[subprocess.Popen[bytes]],
) -> None:
    # Given the embedded queue, the first candidate active, corrections, auto-promotion
    # on, a run left running by a worker that died, and a manual run queued and sent
    # by task name, as the dashboard does
    settings = make_settings(
        tmp_path,
        synthetic_tree,
        "head_epochs=0",
        "fine_tune_epochs=1",
        "fine_tune_learning_rate=0.0002",
        broker_url="filesystem://",
        retrain_auto_promote=True,
        gate_max_auc_drop=0.05,
    )
    active_id = _with_active(settings, first_run[0])
    seeded(settings, tmp_path / "bucket")
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with session_scope(factory) as session:
        orphan = request_run(session=session, trigger=RunTrigger.SCHEDULE)
        orphan.status = RunStatus.RUNNING
        run_id = request_run(session=session, trigger=RunTrigger.MANUAL).id
    taskqueue.send(taskqueue.create_celery(settings), taskqueue.RETRAIN, args=["manual", run_id])
    # When a training worker starts
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSCREEN_")}
    env.update(_env(settings), DEEPSCREEN_BROKER_URL="filesystem://", PYTHONPATH=str(ROOT))
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        training_worker.append(
            subprocess.Popen(
                [sys.executable, "-m", "deepscreen.cli", "training-worker"],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 300
    while True:
        with session_scope(factory) as session:
            done = session.get_one(TrainingRun, run_id).status not in PENDING
        if done:
            break
        assert training_worker[0].poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(1)
    engine.dispose()
    # Then it failed the orphan, and trained from the active model's weights, compared
    # against it, registered the new model and made it active, both changes audited
    s = state(settings)
    runs = {r.id: r for r in s.runs}
    run = runs[run_id]
    tail = log.read_text(errors="replace")[-3000:]
    assert run.status is RunStatus.REGISTERED, (run.error, run.gate_report, tail)
    assert runs[orphan.id].status is RunStatus.FAILED
    report = run.gate_report
    assert run.task_id and report is not None and report["passed"]
    assert report["training"]["initial_weights"].startswith("active model")
    assert report["criteria"]["golden"]["active_auc"] is not None
    assert report["regression"]["active"] is not None and report["regression"]["n"] == 12
    versions = {v.id: v for v in s.versions}
    assert versions[active_id].status is ModelStatus.RETIRED
    new = versions[run.candidate_model_version_id or 0]
    assert new.active and new.status is ModelStatus.ACTIVE and new.gate_report == report
    assert run.base_model_version_id == active_id
    assert [(e.username, e.action, e.before, e.after) for e in s.events] == [
        (
            "retraining",
            "model.register",
            None,
            {"training_run": run_id, "sha256": new.sha256, "status": "candidate"},
        ),
        (
            "retraining",
            "model.activate",
            {"active": active_id},
            {"active": new.id, "training_run": run_id},
        ),
    ]
