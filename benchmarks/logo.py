"""Leave-one-generator-out: how the recipe does on a kind of fake it never saw.

Run from the repository root, with ../shared present::

    python benchmarks/logo.py [--families hardfakevsreal,sdfd,...] [--set KEY=VALUE ...]
                              [--max-per-group N] [--json OUT]

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
from pathlib import Path

import numpy as np
from common import REPO_ROOT
from sklearn.metrics import roc_auc_score

from deepscreen.config import Settings
from training.allocator import restart_on_tcmalloc
from training.data import Sample, load_pixels, read_source
from training.evaluate import FAKE_FAMILY_NAMES, fpr_per_real_source, threshold_for_sources
from training.export import export
from training.hparams import load_hparams
from training.train import face_stage_for, predict, preprocessing_for, train_samples

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
    samples: list[Sample], family: str, overrides: dict[str, str], keep: Path | None
) -> dict:
    """Train without ``family``'s fakes and score every family; with ``keep``, export
    the model to ``keep/<family>`` (e.g. the base of ``benchmarks/adaptation.py``)."""
    hp = load_hparams(None, {**overrides, "exclude_sources": f"{family}:fake"})
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"logo-{family}-") as work:
        result = train_samples(samples, hp, Path(work))
    seconds = time.monotonic() - started
    if keep is not None:
        export(
            result.model,
            result.valid,
            result.hp,
            keep / family,
            sources=result.sources,
            training_info={"leave_one_out": family, "train_wall_time_s": round(seconds, 1)},
        )
    valid = result.valid
    val_scores = result.val_scores
    val_sources = [s.source for s in valid.samples]
    threshold = threshold_for_sources(val_scores, valid.labels, val_sources, hp.target_fpr)
    held_out = [s for s in samples if s.source == family and s.label == 1]
    loaded = load_pixels(held_out, preprocessing_for(hp), face_stage=face_stage_for(hp))
    held_scores = predict(result.model, loaded.pixels, hp.batch_size)
    reals = val_scores[valid.labels == 0]
    row: dict = {"held_out": family, "threshold": threshold, "train_s": round(seconds), "cells": {}}
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


def print_matrix(rows: list[dict]) -> None:
    fams = [f for f in FAKE_FAMILY_NAMES if any(f in r["cells"] for r in rows)]
    print("\nROC-AUC / recall at the run's threshold; * = the family left out of training")
    print(f"{'left out':<16}" + "".join(f"{f[:15]:>17}" for f in fams) + "   FPR per real source")
    for r in rows:
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
    args = parser.parse_args(argv)
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
        row = one_run(samples, family, overrides, args.keep)
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
