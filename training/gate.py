"""The retraining gate: is a candidate good enough to register?

Both models are judged as shipped: their ``.tflite`` through
`deepscreen.inference.Classifier`, the workers' serving class, each with its own
card's preprocessing, face stage and threshold.

A candidate passes by one of two rules, and the report names the one that decided
(``decided_by``):

1. **fixes-corrections**: it classifies at least ``settings.gate_min_fixed_share`` of
   the moderators' corrections (the regression set) as they did, at its own
   threshold, and its golden-set ROC-AUC is at most ``settings.gate_max_auc_drop``
   below the active model's. This is what an adaptation to a new generator must do.
2. **fewer-false-positives**: its false-positive rate on the golden set's real
   images is lower than the active model's, with no real source worse by more than
   a point, its golden ROC-AUC is within the same tolerance, and it fixes at least
   as many corrections as the active model.

With no active model there is nothing to compare with: the candidate must reach the
absolute bar ``hp.min_val_auc`` on the golden set and fix the share of corrections
(rule ``absolute-bar``). With no (readable) correction the regression part passes
vacuously, and the report says so.

The report is plain JSON (see `gate_report`); it is stored on the training run
either way and on the model version when the candidate is registered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepscreen.config import Settings
from deepscreen.inference import Classifier
from training.data import LoadedSplit, Sample, load_pixels
from training.evaluate import binary_metrics, fpr_per_real_source

#: Version of the report's layout, for the dashboard.
REPORT_SCHEMA = 1


@dataclass(frozen=True)
class GateSets:
    """What the gate measures on."""

    golden: list[Sample]
    #: Where the golden set came from, for the report.
    golden_source: str
    #: The corrections, labelled as the moderators decided.
    regression: list[Sample]


def _scores(clf: Classifier, loaded: LoadedSplit) -> np.ndarray:
    if not len(loaded.samples):
        return np.zeros(0, np.float32)
    return clf.predict_pixels(loaded.pixels)


def _fixed(clf: Classifier, loaded: LoadedSplit) -> int:
    """How many samples ``clf`` labels as their label says, at its own threshold."""
    predicted = (_scores(clf, loaded) >= clf.threshold).astype(int)
    return int(np.sum(predicted == loaded.labels))


def _real_fprs(clf: Classifier, loaded: LoadedSplit) -> dict[str, float]:
    rows = fpr_per_real_source(
        _scores(clf, loaded), loaded.labels, [x.source for x in loaded.samples], clf.threshold
    )
    return {name: row["fpr"] for name, row in rows.items()}


#: How much worse (absolute) one real source's false-positive rate may get under the
#: fewer-false-positives rule.
FPR_SOURCE_SLACK = 0.01


def _model(clf: Classifier) -> dict[str, Any]:
    return {"sha256": clf.version, "name": clf.card.get("name"), "threshold": clf.threshold}


def gate_report(
    *,
    candidate_dir: Path,
    active_dir: Path | None,
    sets: GateSets,
    settings: Settings,
    min_auc: float,
) -> dict[str, Any]:
    """Evaluate the candidate (and the active model) and decide; returns the report.

    Keys: ``passed``; ``reasons`` (one sentence per criterion); ``criteria.golden``
    and ``criteria.regression`` (``passed``, the figures compared and the bar);
    ``golden`` (source, ``n``, full metrics of each model at its threshold);
    ``regression`` (``n``, ``fixed`` and ``fixed_share`` of each model);
    ``candidate`` and ``active`` (sha256, name, threshold); ``wall_time_s``.
    """
    started = time.monotonic()
    threads = settings.inference_threads
    candidate = Classifier(candidate_dir, num_threads=threads)
    active = Classifier(active_dir, num_threads=threads) if active_dir is not None else None

    def load(clf: Classifier, samples: list[Sample]) -> LoadedSplit:
        # Each model sees its own card's inputs: face crops when it has a face stage.
        return load_pixels(
            samples, clf.preprocessing, settings=settings, face_stage=clf.face_stage
        )

    def loaded_for(clf: Classifier, samples: list[Sample], done: LoadedSplit) -> LoadedSplit:
        same = (clf.preprocessing, clf.face_stage) == (candidate.preprocessing, candidate.face_stage)
        return done if same else load(clf, samples)

    golden = load(candidate, sets.golden)
    if len(set(golden.labels.tolist())) < 2:
        raise ValueError(f"the golden set ({sets.golden_source}) needs real and fake images")
    cand_golden = binary_metrics(_scores(candidate, golden), golden.labels, candidate.threshold)
    regression = load(candidate, sets.regression)
    n_reg = len(regression.samples)
    cand_fixed = _fixed(candidate, regression)

    act_golden: dict[str, Any] | None = None
    act_fixed: int | None = None
    if active is not None:
        act_set = loaded_for(active, sets.golden, golden)
        act_golden = binary_metrics(_scores(active, act_set), act_set.labels, active.threshold)
        act_fixed = _fixed(active, loaded_for(active, sets.regression, regression))

    cand_auc = float(cand_golden["roc_auc"])
    golden_criterion: dict[str, Any] = {"candidate_auc": cand_auc}
    if act_golden is not None:
        act_auc = float(act_golden["roc_auc"])
        bar = act_auc - settings.gate_max_auc_drop
        golden_criterion.update(
            active_auc=act_auc, max_auc_drop=settings.gate_max_auc_drop, min_auc=bar
        )
        ok = cand_auc >= bar
        why = (
            f"golden ROC-AUC {cand_auc:.4f} against the active model's {act_auc:.4f}: "
            f"{'within' if ok else 'more than'} the allowed drop of {settings.gate_max_auc_drop}"
        )
    else:
        golden_criterion.update(active_auc=None, max_auc_drop=None, min_auc=min_auc)
        ok = cand_auc >= min_auc
        why = (
            f"no active model to compare with: golden ROC-AUC {cand_auc:.4f} "
            f"{'reaches' if ok else 'is below'} the bar min_val_auc {min_auc}"
        )
    golden_criterion.update(passed=ok, reason=why)

    share = cand_fixed / n_reg if n_reg else None
    bar_share = settings.gate_min_fixed_share
    if n_reg == 0:
        reg_ok = True
        reg_why = "no corrections to check: the regression criterion passes vacuously"
    else:
        reg_ok = share is not None and share >= bar_share
        reg_why = (
            f"{cand_fixed} of {n_reg} corrections classified as the moderators did "
            f"({share:.0%}; at least {bar_share:.0%} needed)"
        )
    regression_criterion = {
        "passed": reg_ok,
        "vacuous": n_reg == 0,
        "fixed": cand_fixed,
        "n": n_reg,
        "fixed_share": share,
        "min_fixed_share": bar_share,
        "reason": reg_why,
    }

    cand_fprs = _real_fprs(candidate, golden)
    fp_criterion: dict[str, Any] = {"candidate": cand_fprs, "active": None}
    if active is not None and act_golden is not None:
        act_fprs = _real_fprs(active, loaded_for(active, sets.golden, golden))
        fp_criterion["active"] = act_fprs
        shared_sources = sorted(set(cand_fprs) & set(act_fprs))
        lower = cand_golden["fpr"] < act_golden["fpr"]
        no_worse = all(cand_fprs[k] <= act_fprs[k] + FPR_SOURCE_SLACK for k in shared_sources)
        keeps_fixes = act_fixed is None or cand_fixed >= act_fixed
        fp_ok = bool(lower and no_worse and keeps_fixes and ok)
        fp_why = (
            f"golden false-positive rate {cand_golden['fpr']:.3f} against the active model's "
            f"{act_golden['fpr']:.3f}"
            + ("" if no_worse else f"; a real source is worse by more than {FPR_SOURCE_SLACK}")
            + ("" if keeps_fixes else "; fixes fewer corrections than the active model")
            + ("" if ok else "; golden ROC-AUC outside the tolerance")
            + (": lower, the rule passes" if fp_ok else ": the rule does not pass")
        )
    else:
        fp_ok = False
        fp_why = "no active model to compare false-positive rates with"
    fp_criterion.update(passed=fp_ok, reason=fp_why, max_source_increase=FPR_SOURCE_SLACK)

    if ok and reg_ok:
        decided_by = "fixes-corrections" if active is not None else "absolute-bar"
    elif fp_ok:
        decided_by = "fewer-false-positives"
    else:
        decided_by = None
    passed = decided_by is not None
    return {
        "schema": REPORT_SCHEMA,
        "passed": passed,
        "decided_by": decided_by,
        "reasons": [why, reg_why, fp_why],
        "criteria": {
            "golden": golden_criterion,
            "regression": regression_criterion,
            "false_positives": fp_criterion,
        },
        "golden": {
            "source": sets.golden_source,
            "n": len(golden.samples),
            "unreadable": len(golden.failed),
            "candidate": cand_golden,
            "active": act_golden,
        },
        "regression": {
            "n": n_reg,
            "unreadable": len(regression.failed),
            "candidate": {"fixed": cand_fixed, "fixed_share": share},
            "active": None
            if act_fixed is None
            else {"fixed": act_fixed, "fixed_share": act_fixed / n_reg if n_reg else None},
        },
        "candidate": _model(candidate),
        "active": None if active is None else _model(active),
        "wall_time_s": round(time.monotonic() - started, 2),
    }
