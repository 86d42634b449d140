"""Leave-one-generator-out: how the recipe does on a kind of fake it never saw.

Run from the repository root, with ../shared present::

    python benchmarks/logo.py [--families hardfakevsreal,sdfd,...] [--set KEY=VALUE ...]
                              [--max-per-group N] [--json OUT] [--keep DIR [--rescore]]

For each fake family (a source's fakes: ciplab composites, StyleGAN, StyleGAN2, Stable
Diffusion 2.1, Stable Diffusion 3), trains the recipe (``training/hparams.toml`` plus
``--set`` overrides) on all the data except that family's fakes, chooses the
threshold by the card's rule (false-positive rate pooled over the real sources of the
validation split, each weighted equally, at ``target_fpr``), and scores every fake
family: the held-out one on all its images, the others on their validation images.
Prints, per held-out family, the matrix of ROC-AUC (each family's fakes against every
validation real) and recall at that threshold, plus the false-positive rate per real
source. Scores are the Keras model's on the face stage's crops (the largest face),
the same crops serving classifies.

A benchmark, not a test: each row is one training run (tens of minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import REPO_ROOT
from sklearn.metrics import roc_auc_score

from deepscreen.config import Settings
from training.allocator import restart_on_tcmalloc
from training.data import Sample, load_pixels, read_source, split_samples
from training.evaluate import FAKE_FAMILY_NAMES, fpr_per_real_source, threshold_for_sources
from training.export import export
from training.hparams import HParams, load_hparams
from training.model import build_model, fitted_part, set_score_weights
from training.train import (
    exclude,
    face_stage_for,
    predict,
    preprocessing_for,
    train_samples,
)

SHARED = REPO_ROOT.parent / "shared"
BACKBONE = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet.weights.h5"
DEFAULT_FAMILIES = ("hardfakevsreal", "sdfd", "ciplab", "ffhq-stylegan", "sd3")


def cap_groups(samples: list[Sample], cap: int, seed: int) -> list[Sample]:
    """At most ``cap`` training-side samples per (source, label, given split), chosen by a
    stable hash; samples the layout puts in its validation split are all kept."""
    if cap <= 0:
        return samples
    groups: dict[tuple, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.source, s.label, s.split)].append(s)
    out = []
    for (_, _, split), members in groups.items():
        if split == "valid":
            out += members
            continue
        members.sort(key=lambda s: hashlib.sha256(f"{seed}:{s.path}".encode()).hexdigest())
        out += members[:cap]
    return out


def one_run(
    samples: list[Sample],
    family: str,
    overrides: dict[str, str],
    keep: Path | None,
    rescore: bool = False,
) -> dict:
    """Train without ``family``'s fakes and score every family; with ``keep``, export
    the model to ``keep/<family>`` (e.g. the base of ``benchmarks/adaptation.py``).
    With ``rescore``, train nothing: score the model kept there by an earlier run
    under this recipe's score weights (`fake_class_weights`, which training never sees)
    and export it so to ``keep/<family>-rescored``."""
    hp = load_hparams(None, {**overrides, "exclude_sources": f"{family}:fake"})
    result = None
    started = time.monotonic()
    if rescore:
        assert keep is not None
        model, hp, valid, card = _kept_model(samples, hp, keep / family)
        val_scores = predict(model, valid.pixels, hp.batch_size)
        # The same run's model with this recipe's score weights, exported beside it.
        sources, info = card["training"].get("sources"), dict(card["training"])
        info.update(rescored_from=card["version"], fake_class_weights=hp.fake_class_weights)
        out = keep / f"{family}-rescored"
    else:
        with tempfile.TemporaryDirectory(prefix=f"logo-{family}-") as work:
            result = train_samples(samples, hp, Path(work))
        model, hp, valid, val_scores = result.model, result.hp, result.valid, result.val_scores
        sources, info, out = result.sources, {"leave_one_out": family}, keep and keep / family
    seconds = time.monotonic() - started
    if out is not None:
        info.setdefault("train_wall_time_s", round(seconds, 1))
        export(model, valid, hp, out, sources=sources, training_info=info)
    held_out = [s for s in samples if s.source == family and s.label == 1]
    loaded = load_pixels(held_out, preprocessing_for(hp), face_stage=face_stage_for(hp))
    row = score_row(model, hp, valid, val_scores, family, loaded.pixels)
    row["train_s"] = round(seconds)
    if result is not None and result.unaveraged_weights is not None:
        # The same run without the tail's weight average: a paired comparison.
        fitted_part(model, hp).set_weights(result.unaveraged_weights)
        plain = score_row(model, hp, valid, predict(model, valid.pixels, hp.batch_size),
                          family, loaded.pixels)
        row["unaveraged"] = plain
    return row


def score_row(
    model, hp: HParams, valid, val_scores: np.ndarray, family: str, held_pixels: np.ndarray
) -> dict:
    """ROC-AUC and recall at the card's threshold rule per fake family, and the
    false-positive rate per real source, of ``model`` left without ``family``."""
    val_sources = [s.source for s in valid.samples]
    threshold = threshold_for_sources(val_scores, valid.labels, val_sources, hp.target_fpr)
    held_scores = predict(model, held_pixels, hp.batch_size)
    reals = val_scores[valid.labels == 0]
    row: dict = {"held_out": family, "threshold": threshold, "cells": {}}
    for fam in FAKE_FAMILY_NAMES:
        if fam == family:
            fakes = held_scores
        else:
            fakes = val_scores[(valid.labels == 1) & (np.array(val_sources) == fam)]
        if not len(fakes):
            continue
        y = np.r_[np.zeros(len(reals)), np.ones(len(fakes))]
        row["cells"][fam] = {
            "n": len(fakes),
            "auc": float(roc_auc_score(y, np.r_[reals, fakes])),
            "recall": float(np.mean(fakes >= threshold)),
            "unseen": fam == family,
        }
    row["fpr_per_real_source"] = {
        k: round(v["fpr"], 4)
        for k, v in fpr_per_real_source(val_scores, valid.labels, val_sources, threshold).items()
    }
    return row


def _kept_model(samples: list[Sample], hp: HParams, folder: Path):
    """The model an earlier run exported to ``folder`` (its weights and class order)
    with ``hp``'s score weights, the run's validation split loaded as training did, and
    the folder's card."""
    card = json.loads((folder / "model_card.json").read_text())
    hp = replace(hp, fake_class_names=card["hyperparameters"].get("fake_class_names", ""))
    model = build_model(hp, weights="none")
    model.load_weights(folder / "model.weights.h5")
    set_score_weights(model, hp)
    valid = split_samples(exclude(samples, hp.exclude_sources), hp.val_fraction, hp.seed)["valid"]
    loaded = load_pixels(valid, preprocessing_for(hp), face_stage=face_stage_for(hp))
    return model, hp, loaded, card


def print_matrix(rows: list[dict]) -> None:
    fams = [f for f in FAKE_FAMILY_NAMES if any(f in r["cells"] for r in rows)]
    print("\nROC-AUC / recall at the run's threshold; * = the family left out of training")
    print(f"{'left out':<16}" + "".join(f"{f[:15]:>17}" for f in fams) + "   FPR per real source")
    shown = []
    for r in rows:
        shown.append(r)
        if "unaveraged" in r:
            shown.append({**r["unaveraged"], "held_out": f"{r['held_out']} (no avg)"})
    for r in shown:
        cells = []
        for f in fams:
            c = r["cells"].get(f)
            cells.append(
                f"{'*' if c and c['unseen'] else ' '}{c['auc']:.3f}/{c['recall']:.2f}" if c else "-"
            )
        fpr = " ".join(f"{k}={v:.3f}" for k, v in r["fpr_per_real_source"].items())
        print(f"{r['held_out']:<16}" + "".join(f"{c:>17}" for c in cells) + f"   {fpr}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-per-group", type=int, default=0,
                        help="cap training-side images per (source, label), 0 = all")
    parser.add_argument("--json", type=Path, help="append each run's row to this JSON-lines file")
    parser.add_argument("--keep", type=Path, help="export each run's model to KEEP/<family>")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="train nothing: score the models an earlier run kept in KEEP under this "
        "recipe's score weights (fake_class_weights), exported to KEEP/<family>-rescored",
    )
    args = parser.parse_args(argv)
    if args.rescore and args.keep is None:
        parser.error("--rescore needs --keep DIR, the folder of an earlier run's models")
    if not (SHARED / "data").is_dir():
        print(f"{SHARED / 'data'} not found: this benchmark needs the shared data", file=sys.stderr)
        return 2
    overrides = dict(pair.split("=", 1) for pair in args.set)
    overrides.setdefault("weights", str(BACKBONE))
    samples = read_source(str(SHARED / "data"))
    if (SHARED / "data-more").is_dir():
        samples += read_source(str(SHARED / "data-more"))
    samples = cap_groups(samples, args.max_per_group, 0)
    rows = []
    for family in args.families.split(","):
        row = one_run(samples, family, overrides, args.keep, args.rescore)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps({**row, "overrides": overrides,
                                     "max_per_group": args.max_per_group}) + "\n")
        print_matrix(rows)
    return 0


if __name__ == "__main__":
    restart_on_tcmalloc(Settings.from_env().training_allocator)
    sys.exit(main())
