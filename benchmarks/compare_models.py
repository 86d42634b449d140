"""Two exported models on the same validation images, per source, with a paired bootstrap.

Run from the repository root, with ../shared/data present::

    python benchmarks/compare_models.py --candidate DIR [--baseline DIR] [--flip]

Rebuilds the validation split the training pipeline holds out (the baseline card's
``val_fraction`` and ``seed``), scores it through the serving class with both models
and prints, per source, ROC-AUC and accuracy at 0.5 of each, and the 95 % interval of
the paired bootstrap of the AUC change (candidate minus baseline). With ``--flip``
the candidate is replaced by the baseline scored as the mean of each image and its
horizontal mirror (test-time augmentation at twice the inference cost).

A script, not a test: it answers "is this change bigger than the noise of a
few hundred validation images?" before anyone ships a model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from common import SHARED_DATA
from sklearn.metrics import roc_auc_score

from deepscreen.inference import Classifier
from training.data import load_pixels, read_source, split_samples

BATCH = 32


def scores(clf: Classifier, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [clf.predict_pixels(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)]
    )


def paired_auc_change(
    labels: np.ndarray, base: np.ndarray, cand: np.ndarray, rounds: int, seed: int = 0
) -> np.ndarray:
    """Bootstrap distribution of AUC(cand) - AUC(base) over resampled images."""
    rng = np.random.default_rng(seed)
    changes = []
    for _ in range(rounds):
        pick = rng.integers(0, len(labels), len(labels))
        if labels[pick].min() == labels[pick].max():
            continue  # one class only: AUC undefined for this draw
        y = labels[pick]
        changes.append(roc_auc_score(y, cand[pick]) - roc_auc_score(y, base[pick]))
    return np.array(changes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--candidate", type=Path, default=None)
    parser.add_argument("--flip", action="store_true", help="candidate = baseline with flip TTA")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv)
    if (args.candidate is None) == (not args.flip):
        parser.error("give --candidate DIR or --flip (not both)")
    if not args.data.is_dir():
        print(f"{args.data} not found: this comparison needs the shared data", file=sys.stderr)
        return 2

    base = Classifier(args.baseline, num_threads=2)
    hp = base.card["hyperparameters"]
    valid = split_samples(read_source(str(args.data)), hp["val_fraction"], hp["seed"])["valid"]
    loaded = load_pixels(valid, base.preprocessing)
    labels = np.array([s.label for s in loaded.samples])
    sources = np.array([s.source for s in loaded.samples])
    base_scores = scores(base, loaded.pixels)
    if args.flip:
        cand_name = "baseline + flip"
        cand_scores = (base_scores + scores(base, loaded.pixels[:, :, ::-1])) / 2
    else:
        cand = Classifier(args.candidate, num_threads=2)
        pixels = loaded.pixels
        if cand.preprocessing != base.preprocessing:  # same images, the candidate's own resize
            pixels = load_pixels(loaded.samples, cand.preprocessing).pixels
        cand_name = cand.version[:12]
        cand_scores = scores(cand, pixels)

    print(f"baseline {base.version[:12]}  candidate {cand_name}  ({len(labels)} images)")
    print(
        f"{'source':16} {'n':>5} {'AUC base':>9} {'AUC cand':>9} {'acc@.5 base':>12}"
        f" {'acc@.5 cand':>12} {'AUC change, 95% CI':>28}"
    )
    for source in sorted(set(sources)):
        m = sources == source
        y, b, c = labels[m], base_scores[m], cand_scores[m]
        change = paired_auc_change(y, b, c, args.rounds)
        low, mid, high = np.percentile(change, [2.5, 50, 97.5])
        print(
            f"{source:16} {m.sum():5d} {roc_auc_score(y, b):9.4f} {roc_auc_score(y, c):9.4f}"
            f" {((b > 0.5) == y).mean():12.4f} {((c > 0.5) == y).mean():12.4f}"
            f"   {mid:+.4f} [{low:+.4f}, {high:+.4f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
