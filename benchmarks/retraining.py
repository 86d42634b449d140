"""One real retraining run on ../shared/data with simulated moderator corrections.

1. "Live traffic": ``--traffic`` images drawn (seeded) from the *training* split of
   ../shared/data, never from the golden set, copied into a folder and classified
   end to end by ``deepscreen run`` (embedded queue, SQLite) with the packaged model,
   which becomes the active model version.
2. Simulated moderators: every verdict whose label is wrong (the truth is the
   dataset's label) gets a flag with the right label, as a ``Review`` row like the
   dashboard writes; `deepscreen.corrections` reads them back as corrections.
3. `training.retrain.retrain`: base data = all of ../shared/data, plus the
   corrections; golden set = the base data's validation split (the packaged model's
   own held-out validation images); the gate compares the candidate with the
   packaged model there and on the corrections.

Prints the corrections, the gate report's figures for both models and the wall
times, and writes the whole report as JSON (``--report``). Needs the training extra
and ../shared (weights and data); takes tens of minutes on 2 cores.

    python benchmarks/retraining.py --traffic 800 --set head_epochs=1 --set fine_tune_epochs=4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from common import REPO_ROOT, SHARED_DATA, load_average

sys.path.insert(0, str(REPO_ROOT))

from sqlalchemy import select

from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image
from deepscreen.db.moderation import Action, Review, Role, User, Verdict
from deepscreen.db.session import make_engine, make_session_factory, session_scope

SHARED_WEIGHTS = SHARED_DATA.parent / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet.weights.h5"
#: Who the simulated flags are by.
MODERATOR = "simulated-moderator"


def traffic_folder(
    folder: Path, count: int, seed: int, val_fraction: float, split_seed: int
) -> int:
    """Copy ``count`` training-split images into ``folder`` as ``<label>-<n>.<ext>``."""
    from training.data import LABELS, read_source, split_samples

    train = split_samples(read_source(str(SHARED_DATA)), val_fraction, split_seed)["train"]
    picked = random.Random(seed).sample(train, min(count, len(train)))
    folder.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(picked):
        assert sample.path is not None
        shutil.copyfile(sample.path, folder / f"{LABELS[sample.label]}-{i:05d}{sample.path.suffix}")
    return len(picked)


def classify(folder: Path, settings: Settings) -> float:
    """``deepscreen run FOLDER`` in a subprocess; returns its wall time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSCREEN_")}
    env.update(DEEPSCREEN_DATA_DIR=str(settings.data_dir), PYTHONPATH=str(REPO_ROOT))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "deepscreen.cli", "run", str(folder), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"deepscreen run failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return time.monotonic() - started


def flag_misses(settings: Settings) -> tuple[int, int]:
    """Flag every wrong verdict with the truth from the file name; (verdicts, flags)."""
    engine = make_engine(settings)
    try:
        with session_scope(make_session_factory(engine)) as session:
            user = User(
                username=MODERATOR,
                password_hash="!",  # cannot log in
                role=Role.MODERATOR,
                session_token=MODERATOR,
            )
            session.add(user)
            session.flush()
            rows = session.execute(select(Verdict, Image.key).join(Image)).tuples().all()
            now = utcnow()
            flags = 0
            for i, (verdict, key) in enumerate(rows):
                truth = Path(key).name.split("-")[0]
                if verdict.model_label == truth:
                    continue
                flags += 1
                verdict.flagged, verdict.flag_label = True, truth
                verdict.human_label = verdict.final_label = truth
                session.add(
                    Review(
                        image_id=verdict.image_id,
                        user_id=user.id,
                        action=Action.FLAG,
                        label=truth,
                        model_version_id=verdict.model_version_id,
                        score=verdict.score,
                        created_at=now + timedelta(milliseconds=i),
                    )
                )
            return len(rows), flags
    finally:
        engine.dispose()


def metrics_row(name: str, m: dict[str, Any] | None) -> str:
    if m is None:
        return f"{name:<28} {'-':>8}"
    return (
        f"{name:<28} {m['roc_auc']:>8.4f} {m['accuracy']:>8.4f} {m['precision']:>9.4f} "
        f"{m['recall']:>8.4f} {m['fpr']:>8.4f} {m['threshold']:>9.4f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traffic", type=int, default=800, help="images of simulated traffic")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="retraining hyperparameter override (repeatable), as DEEPSCREEN_RETRAIN_HPARAMS",
    )
    parser.add_argument(
        "--weights",
        default=str(SHARED_WEIGHTS),
        help="backbone initialisation: a .weights.h5, imagenet or none (default: ../shared's)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--report", type=Path, default=Path("retraining-report.json"))
    args = parser.parse_args()
    if not (SHARED_DATA / "MANIFEST.csv").is_file() or not SHARED_WEIGHTS.is_file():
        print(f"needs ../shared: {SHARED_DATA} and {SHARED_WEIGHTS}", file=sys.stderr)
        return 2
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="deepscreen-retrain-bench-"))
    settings = Settings(
        data_dir=data_dir,
        retrain_data=(str(SHARED_DATA),),
        retrain_weights=args.weights,
        retrain_from="active",
        retrain_hparams=tuple(args.set),
    )
    migrate.upgrade(settings)
    from training.retrain import hparams_for, retrain

    hp = hparams_for(settings)
    print(f"data dir {data_dir}; load average {load_average()}; overrides {args.set or 'none'}")
    started = time.monotonic()
    n = traffic_folder(data_dir / "traffic", args.traffic, args.seed, hp.val_fraction, hp.seed)
    seconds = classify(data_dir / "traffic", settings)
    verdicts, flags = flag_misses(settings)
    print(f"traffic: {n} training-split images classified in {seconds:.1f} s; {verdicts} verdicts")
    print(f"simulated moderators flagged {flags} misclassified ones ({flags / verdicts:.1%})")
    outcome = retrain(settings, trigger="manual")
    total = time.monotonic() - started
    report = outcome.report or {}
    args.report.write_text(json.dumps({"outcome": outcome.summary(), "report": report}, indent=2))
    print(f"\nrun {outcome.run_id}: {outcome.status}; error: {outcome.error}")
    for reason in report.get("reasons", []):
        print(f"  - {reason}")
    golden = report.get("golden", {})
    print(f"\ngolden set: {golden.get('source')} ({golden.get('n')} images)")
    print(
        f"{'model':<28} {'ROC-AUC':>8} {'accuracy':>8} {'precision':>9} {'recall':>8} "
        f"{'FPR':>8} {'threshold':>9}"
    )
    print(metrics_row("active (packaged)", golden.get("active")))
    print(metrics_row("candidate", golden.get("candidate")))
    regression = report.get("regression", {})
    for who in ("active", "candidate"):
        r = regression.get(who) or {}
        print(f"corrections fixed by {who:<9}: {r.get('fixed')} of {regression.get('n')}")
    print(f"timings (s): {report.get('timings_s')}; whole benchmark {total:.0f} s")
    print(f"report: {args.report}")
    return 0 if outcome.status in ("registered", "refused") else 1


if __name__ == "__main__":
    raise SystemExit(main())
