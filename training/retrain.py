"""One retraining run: corrections + base data -> candidate -> gate -> registry.

`retrain` claims (or creates) a `TrainingRun` row, trains on the configured base
datasets plus every moderator correction so far, exports the candidate with the
parity check, puts it through the gate (`training.gate`) and, if it passes,
publishes it to the registry as a candidate (and activates it when
``settings.retrain_auto_promote``). The gate report is stored on the run either way.

Run states: queued -> running -> registered (gate passed, published), refused (the
training quality gate, the export parity check or the gate said no; nothing is
published) or failed (an error; the message is on the run and the run folder under
``<data_dir>/retraining/`` is kept for inspection).

The report is `training.gate.gate_report`'s, plus ``run_id``, ``training`` (base
datasets and sample count, corrections and their weight, initial weights, the
hyperparameter overrides, the Keras validation ROC-AUC) and ``timings_s`` (train,
export, gate, total). A candidate refused before the gate (training quality gate,
parity) gets ``passed: false``, ``reasons``, ``criteria.training`` and ``refused_by``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from deepscreen import registry
from deepscreen.config import Settings
from deepscreen.corrections import CORRECTIONS_SOURCE, corrections, write_manifest
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import ModelVersion
from deepscreen.db.moderation import AuditEvent
from deepscreen.db.retraining import RunStatus, RunTrigger, TrainingRun
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.errors import ConfigError
from deepscreen.inference import Classifier
from deepscreen.retraining import last_review_id, pending_run
from training.adapt import AdaptOptions, parent_hparams, train_adapted
from training.data import Sample, read_manifest, read_source, split_samples
from training.export import WEIGHTS_FILE, ParityError, export
from training.gate import GateSets, gate_report
from training.hparams import HParams
from training.train import QualityGateFailed, train_samples

logger = logging.getLogger(__name__)

#: Who the audit log names for what a run does.
AUDIT_USER = "retraining"
#: Outcome status of a delivery that found its run already claimed (or nothing to do).
SKIPPED = "skipped"


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended."""

    run_id: int | None
    #: A `RunStatus` value, or ``"skipped"``.
    status: str
    report: dict[str, Any] | None = None
    model_version_id: int | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        passed = None if self.report is None else self.report.get("passed")
        return {
            "run_id": self.run_id,
            "status": self.status,
            "passed": passed,
            "model_version_id": self.model_version_id,
            "error": self.error,
        }


class Refused(Exception):
    """The candidate was refused before the gate (training quality gate, parity)."""


def _overrides(settings: Settings) -> dict[str, Any]:
    """``settings.retrain_hparams`` as a dict; ConfigError when malformed."""
    overrides: dict[str, Any] = {}
    for pair in settings.retrain_hparams:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"DEEPSCREEN_RETRAIN_HPARAMS: expected name=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


def _mode(settings: Settings, active_dir: Path | None, init: Path | None) -> tuple[str, str]:
    """``adapt`` or ``full``, and why, for the report."""
    if settings.retrain_mode == "full":
        return "full", "DEEPSCREEN_RETRAIN_MODE=full"
    if active_dir is None:
        return "full", "adapt asked, but there is no active model: full training"
    if not (active_dir / WEIGHTS_FILE).is_file():
        return "full", "adapt asked, but the active model carries no Keras weights: full training"
    return "adapt", f"adapting the active model from its own weights ({WEIGHTS_FILE})"


def hparams_for(settings: Settings) -> HParams:
    """HParams defaults + ``settings.retrain_hparams``; the backbone initialisation
    is ``settings.retrain_weights``."""
    overrides = _overrides(settings)
    overrides["weights"] = settings.retrain_weights
    try:
        return HParams().with_overrides(overrides)
    except ValueError as exc:
        raise ConfigError(f"DEEPSCREEN_RETRAIN_HPARAMS: {exc}") from exc


def retrain(
    settings: Settings,
    *,
    trigger: RunTrigger | str,
    run_id: int | None = None,
    requested_by: int | None = None,
    task_id: str | None = None,
) -> RunOutcome:
    """Run one retraining: claim ``run_id`` (a queued run) or create a run, train,
    gate, publish. Returns how it ended; errors are recorded on the run, not raised.

    A delivery whose run is no longer queued (a redelivered message) does nothing,
    and so does a scheduled run while another one is queued or running, or whose
    task already made a run: Redis gives a message back after the visibility timeout
    (minutes, derived from the classify time limits) while a run takes longer, and
    the copy must not train again once the first run has finished.
    """
    engine = make_engine(settings)
    try:
        factory = make_session_factory(engine)
        claimed = _claim(factory, RunTrigger(trigger), run_id, requested_by, task_id)
        if claimed is None:
            return RunOutcome(run_id, SKIPPED)
        return _run(settings, factory, claimed)
    finally:
        engine.dispose()


def _claim(
    factory: sessionmaker[Session],
    trigger: RunTrigger,
    run_id: int | None,
    requested_by: int | None,
    task_id: str | None,
) -> int | None:
    with session_scope(factory) as session:
        if run_id is None:
            if task_id is not None and _run_of_task(session, task_id) is not None:
                logger.info("retraining task %s already made its run: nothing to do", task_id)
                return None
            if trigger is RunTrigger.SCHEDULE and pending_run(session=session) is not None:
                logger.info("scheduled retraining skipped: a run is queued or running")
                return None
            run = TrainingRun(trigger=trigger, requested_by=requested_by)
            session.add(run)
        else:
            found = session.get(TrainingRun, run_id, with_for_update=True)
            if found is None or found.status is not RunStatus.QUEUED:
                state = "missing" if found is None else found.status.value
                logger.info("retraining run %d is %s: nothing to do", run_id, state)
                return None
            run = found
        run.status, run.started_at, run.task_id = RunStatus.RUNNING, utcnow(), task_id
        session.flush()
        logger.info("retraining run %d started (%s)", run.id, run.trigger.value)
        return run.id


def _run_of_task(session: Session, task_id: str) -> int | None:
    """The run a delivery of task ``task_id`` made, if one did."""
    query = select(TrainingRun.id).where(TrainingRun.task_id == task_id).limit(1)
    return session.scalars(query).first()


def _run(settings: Settings, factory: sessionmaker[Session], run_id: int) -> RunOutcome:
    folder = settings.data_dir / "retraining" / f"run-{run_id}"
    try:
        status, report, version_id = _train_and_gate(settings, factory, run_id, folder)
    except Exception as exc:  # the run's boundary: recorded on the run and logged
        logger.exception("retraining run %d failed", run_id)
        error = f"{type(exc).__name__}: {exc}"
        _finish(factory, run_id, RunStatus.FAILED, error=error)
        return RunOutcome(run_id, RunStatus.FAILED.value, error=error)
    finally:
        _release_keras()
    shutil.rmtree(folder, ignore_errors=True)
    return RunOutcome(run_id, status.value, report, version_id)


@dataclass(frozen=True)
class _Inputs:
    """What a run trains on and is compared with."""

    base: list[Sample]
    #: The corrections, read back from the run's manifest (images in their buckets).
    fixes: list[Sample]
    active: ModelVersion | None
    #: A verified local copy of the active model's folder.
    active_dir: Path | None


def _inputs(
    settings: Settings, factory: sessionmaker[Session], run_id: int, folder: Path
) -> _Inputs:
    """Record the run's corrections and base model, and gather the samples."""
    if not settings.retrain_data:
        raise ConfigError("DEEPSCREEN_RETRAIN_DATA is empty: there is no base dataset")
    with session_scope(factory) as session:
        found = corrections(session=session)
        active = queries.get_active_model_version(session=session)
        run = session.get_one(TrainingRun, run_id)
        run.corrections = len(found)
        run.last_review_id = (
            max([c.review_id for c in found] + [last_review_id(session=session) or 0]) or None
        )
        run.base_model_version_id = active.id if active is not None else None
    manifest = folder / "corrections.csv"
    write_manifest(found, manifest)
    # Corrections always train (none is held out) and are weighted as configured.
    fixes = [
        replace(
            s, split="train", source=CORRECTIONS_SOURCE, weight=settings.retrain_correction_weight
        )
        for s in read_manifest(manifest)
    ]
    base = [s for spec in settings.retrain_data for s in read_source(spec)]
    active_dir = registry.fetch(active, settings=settings) if active is not None else None
    return _Inputs(base, fixes, active, active_dir)


def _train_and_gate(
    settings: Settings, factory: sessionmaker[Session], run_id: int, folder: Path
) -> tuple[RunStatus, dict[str, Any], int | None]:
    started = time.monotonic()
    hp = hparams_for(settings)
    inputs = _inputs(settings, factory, run_id, folder)
    base, fixes, active_dir = inputs.base, inputs.fixes, inputs.active_dir
    init, init_doc = _initial_weights(settings, inputs.active, active_dir, hp)
    mode, mode_doc = _mode(settings, active_dir, init)
    if mode == "adapt":
        assert active_dir is not None
        hp = parent_hparams(Classifier(active_dir, num_threads=1).card)
    elif init is not None and hp.fake_classes and inputs.active is not None:
        # Starting from the active model's weights: its classes keep their meaning.
        kinds = parent_hparams(inputs.active.card or {}).fake_class_names
        hp = replace(hp, fake_class_names=kinds)
    sets = _gate_sets(settings, base, fixes, hp)
    correction_weight = (
        settings.retrain_adapt_correction_weight
        if mode == "adapt"
        else settings.retrain_correction_weight
    )
    report: dict[str, Any] = {
        "run_id": run_id,
        "training": {
            "mode": mode,
            "mode_reason": mode_doc,
            "base": list(settings.retrain_data),
            "base_samples": len(base),
            "corrections": len(fixes),
            "correction_weight": correction_weight,
            "initial_weights": init_doc,
            "hparams": list(settings.retrain_hparams),
        },
    }
    try:
        info: dict[str, Any] = {"retraining_run": run_id, "initial_weights": init_doc}
        if mode == "adapt":
            assert active_dir is not None
            opts = replace(
                AdaptOptions(),
                correction_weight=correction_weight,
                interpolate=settings.retrain_interpolate,
            )
            result, hp, adapted = train_adapted(
                active_dir,
                fixes,
                base,
                folder / "work",
                opts=opts,
                overrides=_overrides(settings),
                settings=settings,
            )
            info.update(adapted)
        else:
            result = train_samples(
                base + fixes, hp, folder / "work", initial_weights=init, settings=settings
            )
        trained = time.monotonic()
        info.update(
            mode=mode,
            corrections=len(fixes),
            train_wall_time_s=round(result.wall_time_s, 1),
            val_auc_keras=result.val_auc,
            history=result.history,
        )
        export(
            result.model,
            result.valid,
            result.hp,
            folder / "model",
            sources=result.sources,
            training_info=info,
        )
    except (QualityGateFailed, ParityError) as exc:
        report.update(
            passed=False,
            reasons=[str(exc)],
            criteria={"training": {"passed": False, "reason": str(exc)}},
            refused_by=type(exc).__name__,
            timings_s={"total": round(time.monotonic() - started, 1)},
        )
        _finish(factory, run_id, RunStatus.REFUSED, report=report)
        logger.info("retraining run %d refused: %s", run_id, exc)
        return RunStatus.REFUSED, report, None
    exported = time.monotonic()
    report["training"]["val_auc_keras"] = result.val_auc
    report.update(
        gate_report(
            candidate_dir=folder / "model",
            active_dir=active_dir,
            sets=sets,
            settings=settings,
            min_auc=hp.min_val_auc,
        )
    )
    report["timings_s"] = {
        "train": round(result.wall_time_s, 1),
        "export": round(exported - trained, 1),
        "gate": report["wall_time_s"],
        "total": round(time.monotonic() - started, 1),
    }
    report = _plain(report)
    if not report["passed"]:
        _finish(factory, run_id, RunStatus.REFUSED, report=report)
        logger.info("retraining run %d refused by the gate: %s", run_id, report["reasons"])
        return RunStatus.REFUSED, report, None
    version_id = _register(settings, factory, run_id, folder / "model", report)
    return RunStatus.REGISTERED, report, version_id


def _gate_sets(
    settings: Settings, base: list[Sample], fixes: list[Sample], hp: HParams
) -> GateSets:
    if settings.retrain_golden:
        return GateSets(read_source(settings.retrain_golden), settings.retrain_golden, fixes)
    # The hash split is fixed by file name, seed and fraction: the same images every run.
    golden = split_samples(base, hp.val_fraction, hp.seed)["valid"]
    source = "validation split of " + ", ".join(settings.retrain_data)
    return GateSets(golden, source, fixes)


def _initial_weights(
    settings: Settings, active: ModelVersion | None, active_dir: Path | None, hp: HParams
) -> tuple[Path | None, str]:
    """The active model's Keras weights when configured and usable, else None (the
    backbone starts from ``hp.weights``); with a sentence saying which, for the report."""
    fallback = f"backbone weights {hp.weights!r}"
    if settings.retrain_from != "active":
        return None, fallback
    if active is None or active_dir is None:
        return None, f"{fallback} (no active model)"
    weights = next(
        (active_dir / n for n in (WEIGHTS_FILE, "model.keras") if (active_dir / n).is_file()),
        None,
    )
    if weights is None:
        return None, f"{fallback} (active model {active.sha256[:12]} has no Keras weights)"
    trained_with = (active.card or {}).get("hyperparameters", {})
    wanted = {"image_size": hp.image_size, "alpha": hp.alpha, "fake_classes": hp.fake_classes}
    # Cards from before fake_classes existed describe a sigmoid output (0).
    found = {k: trained_with.get(k, 0 if k == "fake_classes" else None) for k in wanted}
    if found != wanted:
        return None, f"{fallback} (active model {active.sha256[:12]} is {found}, not {wanted})"
    return weights, f"active model {active.sha256[:12]} ({weights.name})"


def _register(
    settings: Settings,
    factory: sessionmaker[Session],
    run_id: int,
    model_dir: Path,
    report: dict[str, Any],
) -> int:
    """Publish the candidate, store the report, promote it if configured: one transaction."""
    with session_scope(factory) as session:
        version = registry.publish(
            model_dir, settings=settings, session=session, gate_report=report
        )
        now = utcnow()
        session.add(
            AuditEvent(
                username=AUDIT_USER,
                action="model.register",
                target_type="model",
                target_id=str(version.id),
                after={"training_run": run_id, "sha256": version.sha256, "status": "candidate"},
                created_at=now,
            )
        )
        if settings.retrain_auto_promote:
            previous = registry.activate(session, version.id)
            session.add(
                AuditEvent(
                    username=AUDIT_USER,
                    action="model.activate",
                    target_type="model",
                    target_id=str(version.id),
                    before={"active": previous},
                    after={"active": version.id, "training_run": run_id},
                    created_at=now,
                )
            )
        run = session.get_one(TrainingRun, run_id)
        run.status, run.gate_report, run.finished_at = RunStatus.REGISTERED, report, now
        run.candidate_model_version_id = version.id
        logger.info(
            "retraining run %d registered model version %d (%s)%s",
            run_id,
            version.id,
            version.sha256[:12],
            ", now active" if settings.retrain_auto_promote else "",
        )
        return version.id


def _finish(
    factory: sessionmaker[Session],
    run_id: int,
    status: RunStatus,
    *,
    report: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    with session_scope(factory) as session:
        run = session.get_one(TrainingRun, run_id)
        run.status, run.finished_at = status, utcnow()
        if report is not None:
            run.gate_report = _plain(report)
        if error is not None:
            run.error = error[:4000]


def _plain(report: dict[str, Any]) -> dict[str, Any]:
    """The report as plain JSON types (no numpy scalars), as the JSON column stores it."""
    plain: dict[str, Any] = json.loads(json.dumps(report, default=float))
    return plain


def _release_keras() -> None:
    """Free the run's graphs: a training worker lives for many runs."""
    import keras

    keras.backend.clear_session()
