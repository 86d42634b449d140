"""Re-choose a model's operating threshold on the serving class's own scores.

Run from the repository root, with ../shared present::

    python benchmarks/serving_threshold.py MODEL_DIR [--data SOURCE ...]

Export used to choose the threshold on the validation images' largest-face crops;
serving scores every face of an image and keeps the best, so on images with more
than one face the two could differ by an image or two at a per-source cap. Export
now calibrates on each image's best face itself (`LoadedSplit.best_face_scores`);
this is for models exported before that, such as `3a0cc7f5302a`. This scores the
model's validation split (the card's ``val_fraction`` and ``seed``) through the
serving class, re-applies the card's rule (`threshold_for_sources`) and rewrites the
card's threshold, validation metrics, report and plots at it (the crop-based value is
kept as ``thresholds.at_target_fpr_largest_face_crops``). The default model's card
was made so; ``deepscreen evaluate --out`` then gives its ``serving_validation``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from common import REPO_ROOT

from deepscreen.inference import Classifier
from training.adapt import parent_hparams
from training.data import load_pixels, read_source, split_samples
from training.evaluate import (
    evaluate_scores,
    fpr_per_real_source,
    markdown_report,
    score_through_serving,
    threshold_for_sources,
    write_plots,
)

SHARED = REPO_ROOT.parent / "shared"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", action="append", help="default ../shared/data and data-more")
    args = parser.parse_args(argv)
    specs = args.data or [str(SHARED / "data"), str(SHARED / "data-more")]
    clf = Classifier(args.model, num_threads=2)
    card = json.loads((args.model / "model_card.json").read_text())
    hp = parent_hparams(card)
    samples = [s for spec in specs for s in read_source(spec)]
    valid = split_samples(samples, hp.val_fraction, hp.seed)["valid"]
    scored = score_through_serving(clf, valid)
    labels = np.array([s.label for s in scored.samples])
    sources = [s.source for s in scored.samples]
    threshold = threshold_for_sources(scored.scores, labels, sources, hp.target_fpr)
    rates = fpr_per_real_source(scored.scores, labels, sources, threshold)
    th = card["thresholds"]
    crops = th.get("at_target_fpr_largest_face_crops", card["threshold"])
    print(f"threshold {card['threshold']:.4f} -> {threshold:.4f} (crops: {crops:.4f})")
    print({k: round(v["fpr"], 4) for k, v in rates.items()})
    loaded = load_pixels(valid, clf.preprocessing, face_stage=clf.face_stage)
    crop_scores = clf.predict_pixels(loaded.pixels)
    ev = evaluate_scores(crop_scores, loaded.samples, threshold)
    th.update(
        operating=threshold,
        at_target_fpr=threshold,
        at_target_fpr_largest_face_crops=crops,
        fpr_per_real_source=rates,
    )
    note = "; chosen on the serving class's scores of the validation images (every face, "
    if note not in th["calibration"]:
        th["calibration"] += (
            note + "the best one wins), not on their largest-face crops, where it was "
            f"{crops:.4f}"
        )
    card["threshold"] = threshold
    card["metrics"]["validation"] = ev.to_dict()
    write_plots(crop_scores, loaded.samples, threshold, args.model)
    extra = {
        "parity": card["parity"],
        "export": card["export"],
        "training": {k: v for k, v in card["training"].items() if k != "history"},
        "threshold": th["calibration"],
    }
    title = f"deepscreen-mobilenetv2 {card['version'][:12]}"
    (args.model / "report.md").write_text(markdown_report(ev, title, extra))
    (args.model / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
