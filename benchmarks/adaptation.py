"""The flag -> adapt -> gate loop, simulated on ../shared with a family the base never saw.

Run from the repository root, with ../shared present::

    python benchmarks/adaptation.py --base MODEL_DIR [--family hardfakevsreal]
                                    [--steps 50,100,200] [--json OUT]

``MODEL_DIR`` is an exported model (with its Keras weights) that was trained without
the family's fakes, e.g. the leave-one-out model of ``benchmarks/logo.py --keep``.
The family's images are split by the base model's own hash split: flags are drawn
from its training side (n fakes and n reals per step), the held-out fakes from its
validation side. Each step adapts the base model with `training.adapt` (replay of
the base data without the family's fakes), exports it and runs the retraining gate
against the base model, then prints: recall on the held-out fakes of the family at
the adapted model's own threshold, the false-positive rate per real source of the
golden set (the base model's validation split), the golden ROC-AUC change, the
gate's decision and the wall time (adapt + export + gate).

A benchmark, not a test: each step is minutes of training on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import REPO_ROOT

from deepscreen.config import Settings
from deepscreen.inference import Classifier
from training.adapt import AdaptOptions, parent_hparams, train_adapted
from training.allocator import restart_on_tcmalloc
from training.data import read_source, split_samples
from training.evaluate import score_through_serving
from training.export import export
from training.gate import GateSets, gate_report
from training.hparams import coerce

SHARED = REPO_ROOT.parent / "shared"


def write_flags(path: Path, fakes: list, reals: list) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "source"])
        writer.writerows([[str(s.path), "fake", "flags"] for s in fakes])
        writer.writerows([[str(s.path), "real", "flags"] for s in reals])
    return path


def adapt_options(epochs: int, overrides: Sequence[str]) -> AdaptOptions:
    """AdaptOptions with ``epochs`` and KEY=VALUE overrides, each cast to its field's type."""
    options = replace(AdaptOptions(), epochs=epochs)
    types = {f.name: f.type for f in dataclasses.fields(options)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(types)}")
        options = replace(options, **{key: coerce(types[key], value)})
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--family", default="hardfakevsreal")
    parser.add_argument("--steps", default="50,100,200")
    parser.add_argument("--epochs", type=int, default=AdaptOptions().epochs)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one AdaptOptions field (e.g. replay_min=800), to measure a lever",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        options = adapt_options(args.epochs, args.set)
    except ValueError as exc:
        parser.error(str(exc))
    if not (SHARED / "data").is_dir():
        print("../shared/data not found: this benchmark needs the shared data", file=sys.stderr)
        return 2
    base_clf = Classifier(args.base, num_threads=2)
    hp = parent_hparams(base_clf.card)
    everything = read_source(str(SHARED / "data")) + read_source(str(SHARED / "data-more"))
    splits = split_samples(everything, hp.val_fraction, hp.seed)
    family_train = [s for s in splits["train"] if s.source == args.family]
    held_out = [s for s in splits["valid"] if s.source == args.family and s.label == 1]
    # The base data replayed: everything but the family's fakes (the base never saw them).
    base = [s for s in everything if not (s.source == args.family and s.label == 1)]
    golden = split_samples(base, hp.val_fraction, hp.seed)["valid"]
    before = score_through_serving(base_clf, held_out)
    print(
        f"base {base_clf.version[:12]}: recall on {len(held_out)} held-out {args.family} fakes "
        f"{np.mean(before.scores >= base_clf.threshold):.3f} at its threshold "
        f"{base_clf.threshold:.4f}",
        flush=True,
    )
    rng = np.random.default_rng(0)
    fakes = [s for s in family_train if s.label == 1]
    reals = [s for s in family_train if s.label == 0]
    rng.shuffle(fakes)
    rng.shuffle(reals)
    rows = []
    for n in (int(x) for x in args.steps.split(",")):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="adapt-bench-") as tmp:
            tmpdir = Path(tmp)
            flags = write_flags(tmpdir / "flags.csv", fakes[:n], reals[:n])
            fixes = [replace(s, source="corrections") for s in read_source(f"csv:{flags}")]
            result, hp_run, info = train_adapted(
                args.base, fixes, base, tmpdir / "work", opts=options
            )
            out = tmpdir / "model"
            export(
                result.model, result.valid, hp_run, out, sources=result.sources, training_info=info
            )
            report = gate_report(
                candidate_dir=out,
                active_dir=args.base,
                sets=GateSets(golden, "base validation split", fixes),
                settings=Settings(),
                min_auc=hp.min_val_auc,
            )
            clf = Classifier(out, num_threads=2)
            after = score_through_serving(clf, held_out)
            card = json.loads((out / "model_card.json").read_text())
        seconds = time.monotonic() - started
        golden_c = report["golden"]["candidate"]
        golden_a = report["golden"]["active"]
        row = {
            "flags": n,
            "recall_new_family": float(np.mean(after.scores >= clf.threshold)),
            "threshold": clf.threshold,
            "fpr_per_real_source": report["criteria"]["false_positives"]["candidate"],
            "golden_auc": golden_c["roc_auc"],
            "golden_auc_change": golden_c["roc_auc"] - golden_a["roc_auc"],
            "gate_passed": report["passed"],
            "decided_by": report["decided_by"],
            "wall_time_s": round(seconds, 1),
            "train_s": round(result.wall_time_s, 1),
            "version": card["version"],
            "options": dataclasses.asdict(options),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps({**row, "base": base_clf.version}) + "\n")
    print("\nflags  recall(new)  max FPR real  golden AUC change  gate  wall s")
    for r in rows:
        print(
            f"{r['flags']:>5}  {r['recall_new_family']:>11.3f}  "
            f"{max(r['fpr_per_real_source'].values()):>12.3f}  {r['golden_auc_change']:>+17.4f}  "
            f"{(r['decided_by'] or 'refused'):>4}  {r['wall_time_s']:>6.0f}"
        )
    return 0


if __name__ == "__main__":
    restart_on_tcmalloc(Settings.from_env().training_allocator)
    sys.exit(main())
