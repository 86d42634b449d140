"""`deepscreen train`, `evaluate`, `export`, `retrain` and `training-worker`.

Registered on the `deepscreen` script through entry points. Registration imports
nothing heavy; TensorFlow is imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

DATA_HELP = (
    "dataset: a folder with a known layout (ciplab real_and_fake_face/, 140k real-vs-fake/, "
    "or real/ + fake/), a CSV manifest (path,label[,source][,split]), or kind:path with kind "
    "ciplab, 140k, tree or csv; repeat to combine sources"
)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _hparams(args: argparse.Namespace):
    from training.hparams import load_hparams

    overrides = _overrides(args.set or [])
    if getattr(args, "weights", None):
        overrides["weights"] = args.weights
    try:
        return load_hparams(args.hparams, overrides)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"deepscreen: bad hyperparameters: {exc}") from None


def _restart_on_tcmalloc(args: argparse.Namespace) -> None:
    """Restart a TensorFlow command on tcmalloc (`training.allocator`) when it runs as
    the process's own command line; in-process calls (tests) stay as they are."""
    if not getattr(args, "command_line", False):
        return
    from deepscreen.config import Settings
    from deepscreen.errors import ConfigError
    from training.allocator import restart_on_tcmalloc

    try:
        choice = Settings.from_env().training_allocator
    except ConfigError as exc:
        raise SystemExit(f"deepscreen: {exc}") from None
    restart_on_tcmalloc(choice)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, metavar="SOURCE", help=DATA_HELP)
    p.add_argument(
        "--hparams", type=Path, help="hyperparameter TOML (default training/hparams.toml)"
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override one hyperparameter"
    )


def register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train, evaluate and export a model (needs the training extra)"
    )
    _add_common(p)
    p.add_argument("--weights", help='backbone init: "imagenet", "none" or a .weights.h5 path')
    p.add_argument(
        "--out", type=Path, required=True, help="model directory to write (tflite, card, report)"
    )
    p.add_argument("--work-dir", type=Path, help="checkpoint folder (default runs/<time>)")
    p.add_argument("--no-export", action="store_true", help="train and save the Keras model only")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    _restart_on_tcmalloc(args)
    import time

    from training.export import export
    from training.train import QualityGateFailed, train

    hp = _hparams(args)
    work = args.work_dir or Path("runs") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    try:
        result = train(args.data, hp, work)
    except QualityGateFailed as exc:
        print(f"deepscreen: quality gate: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:  # data that cannot train this recipe: say why, no traceback
        print(f"deepscreen train: {exc}", file=sys.stderr)
        return 2
    print(f"Keras model saved to {work / 'model.keras'}")
    if args.no_export:
        return 0
    info = {
        "command": "deepscreen " + " ".join(sys.argv[1:]) if sys.argv else "",
        "data": [str(Path(d).resolve()) if Path(d).exists() else d for d in args.data],
        "train_wall_time_s": round(result.wall_time_s, 1),
        "val_auc_keras": result.val_auc,
        "history": result.history,
        "machine": _machine(),
    }
    card = export(
        result.model, result.valid, result.hp, args.out, sources=result.sources, training_info=info
    )
    total = time.monotonic() - started
    card["training"]["total_wall_time_s"] = round(total, 1)
    (args.out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    _print_summary(card)
    print(f"model written to {args.out} in {total:.0f} s")
    return 0


def register_adapt(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapt",
        help="fine-tune an exported model on moderators' corrections (needs the training extra)",
        description=(
            "Continue training an exported model from its own weights on a corrections "
            "manifest (as `deepscreen corrections export` writes it) plus a replay sample "
            "of its base data, re-choose the threshold by the same rule, and export the "
            "result with the parity check, card, report and plots."
        ),
    )
    p.add_argument("--from", dest="parent", type=Path, required=True, metavar="MODEL_DIR",
                   help="exported model directory to start from (must hold model.weights.h5)")
    p.add_argument("--corrections", type=Path, required=True, metavar="CSV",
                   help="manifest path,label[,source] with local paths, file:// or s3:// URLs")
    p.add_argument("--data", action="append", metavar="SOURCE",
                   help="base data to replay (default: the data in the parent's card, if present)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default 5)")
    p.add_argument("--correction-weight", type=float, help="weight of each correction (default 12)")
    p.add_argument("--interpolate", type=float, metavar="SHARE",
                   help="average the adapted weights with the parent's, SHARE of the adapted "
                   "ones (default 0.8; 1 keeps them as trained, lower keeps more of the parent)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one hyperparameter of the parent's recipe")
    p.set_defaults(func=run_adapt)


def run_adapt(args: argparse.Namespace) -> int:
    _restart_on_tcmalloc(args)
    from dataclasses import replace

    from deepscreen.config import Settings
    from training.adapt import AdaptError, AdaptOptions, adapt
    from training.export import ParityError
    from training.train import QualityGateFailed

    opts = AdaptOptions()
    if args.epochs is not None:
        opts = replace(opts, epochs=args.epochs)
    if args.correction_weight is not None:
        opts = replace(opts, correction_weight=args.correction_weight)
    if args.interpolate is not None:
        if not 0.0 <= args.interpolate <= 1.0:
            print("deepscreen adapt: --interpolate must be between 0 and 1", file=sys.stderr)
            return 2
        opts = replace(opts, interpolate=args.interpolate)
    try:
        card = adapt(
            args.parent,
            args.corrections,
            args.out,
            data=args.data,
            opts=opts,
            overrides=_overrides(args.set or []),
            settings=Settings.from_env(),
        )
    except AdaptError as exc:
        print(f"deepscreen adapt: {exc}", file=sys.stderr)
        return 2
    except (QualityGateFailed, ParityError) as exc:
        print(f"deepscreen adapt: refused: {exc}", file=sys.stderr)
        return 3
    for path, reason in card["training"].get("unreadable", []):
        print(f"skipped {path}: {reason}")
    _print_summary(card)
    print(
        f"adapted {card['training']['adapted_from'][:12]} -> {card['version'][:12]} on "
        f"{card['training']['corrections']} corrections in "
        f"{card['training']['total_wall_time_s']:.0f} s; written to {args.out}"
    )
    return 0


def register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="measure an exported model on labelled data")
    _add_common(p)
    p.add_argument("--model", type=Path, help="model directory (default: the packaged model)")
    p.add_argument(
        "--split",
        choices=("train", "valid", "test", "all"),
        default="valid",
        help="which split of the data to score (default valid, as split in training)",
    )
    p.add_argument("--out", type=Path, help="write report.md, metrics.json and plots here")
    p.add_argument("--threads", type=int, help="LiteRT threads")
    p.add_argument(
        "--record",
        action="store_true",
        help="also record the figures in the model's card (metrics.serving_validation "
        "for the valid split, metrics.serving_<split> otherwise), with this command",
    )
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from deepscreen.errors import ModelError
    from deepscreen.inference import Classifier
    from training.data import read_source, split_samples
    from training.evaluate import (
        evaluate_scores,
        fpr_per_real_source,
        markdown_report,
        score_through_serving,
        write_plots,
    )

    hp = _hparams(args)
    try:
        clf = Classifier(args.model, num_threads=args.threads)
    except ModelError as exc:
        raise SystemExit(f"deepscreen: {exc}") from None
    # The split the model was trained with (its card), unless --set says otherwise.
    recorded = clf.card.get("hyperparameters") or {}
    given = _overrides(args.set or [])
    val_fraction = hp.val_fraction if "val_fraction" in given else recorded.get("val_fraction", hp.val_fraction)
    seed = hp.seed if "seed" in given else recorded.get("seed", hp.seed)
    samples = [s for spec in args.data for s in read_source(spec)]
    splits = split_samples(samples, val_fraction, seed)
    chosen = samples if args.split == "all" else splits[args.split]
    scored = score_through_serving(clf, chosen)
    ev = evaluate_scores(scored.scores, scored.samples, clf.threshold)
    metrics = ev.to_dict()
    labels = np.array([s.label for s in scored.samples])
    metrics["fpr_per_real_source"] = fpr_per_real_source(
        scored.scores, labels, [s.source for s in scored.samples], clf.threshold
    )
    metrics["no_face"] = scored.no_face_counts()
    _print_metrics(metrics)
    print("false-positive rate per real source at the card's threshold:")
    for name, row in metrics["fpr_per_real_source"].items():
        print(f"  {name:<16} {row['what']:<16} n={row['n']:<5} FPR {row['fpr']:.3f}")
    print(f"no_face: {sum(metrics['no_face'].values())} of {len(chosen)} images")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_plots(scored.scores, scored.samples, clf.threshold, args.out)
        (args.out / "report.md").write_text(
            markdown_report(ev, f"Evaluation of {clf.version[:12]}")
        )
        print(f"report written to {args.out}")
    if args.record:
        _record_in_card(clf.model_dir, args, metrics)
    for path, reason in scored.failed:
        print(f"not scored {path}: {reason}")
    return 0


def _record_in_card(model_dir: Path, args: argparse.Namespace, metrics: dict) -> None:
    """Write ``metrics`` into the model's card, saying how they were measured. The card
    is not part of the model's version (the ``.tflite``'s sha256), which stays."""
    from deepscreen.inference import CARD_FILE

    key = "serving_validation" if args.split == "valid" else f"serving_{args.split}"
    data = " ".join(f"--data {spec}" for spec in args.data)
    how = (
        f"deepscreen evaluate {data} --split {args.split}: the image files through the "
        "serving class (face stage, best face wins), at the card's threshold"
    )
    path = model_dir / CARD_FILE
    card = json.loads(path.read_text())
    card.setdefault("metrics", {})[key] = {**metrics, "how": how}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(path)
    print(f"recorded in {path} as metrics.{key}")


def register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a saved Keras model to TFLite with a parity check"
    )
    _add_common(p)
    p.add_argument("--keras", type=Path, required=True, help="model.keras from a training run")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--dtype", choices=("float16", "float32"), help="TFLite weight type")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    _restart_on_tcmalloc(args)
    import keras

    from training.data import load_pixels, read_source, split_samples
    from training.export import ParityError, export
    from training.train import describe_sources, face_stage_for, preprocessing_for

    if args.dtype:
        args.set = [*(args.set or []), f"export_dtype={args.dtype}"]
    hp = _hparams(args)
    model = keras.models.load_model(args.keras)
    samples = [s for spec in args.data for s in read_source(spec)]
    splits = split_samples(samples, hp.val_fraction, hp.seed)
    valid = load_pixels(splits["valid"], preprocessing_for(hp), face_stage=face_stage_for(hp))
    try:
        card = export(
            model,
            valid,
            hp,
            args.out,
            sources=describe_sources(splits),
            training_info={"exported_from": str(args.keras), "machine": _machine()},
        )
    except ParityError as exc:
        print(f"deepscreen: export refused: {exc}", file=sys.stderr)
        return 3
    _print_summary(card)
    return 0


def register_retrain(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "retrain",
        help="run one retraining now: base data + corrections, gate, registry",
        description="Train on DEEPSCREEN_RETRAIN_DATA plus every moderator correction, put "
        "the candidate through the gate and register it if it passes (activating it if "
        "DEEPSCREEN_RETRAIN_AUTO_PROMOTE). Prints the gate report. Exit status: 0 "
        "registered, 3 refused, 1 failed.",
    )
    p.add_argument(
        "--trigger",
        choices=("manual", "schedule", "corrections"),
        default="manual",
        help="what the run is recorded as triggered by (default: manual)",
    )
    p.set_defaults(func=run_retrain)


def run_retrain(args: argparse.Namespace) -> int:
    _restart_on_tcmalloc(args)
    from deepscreen.config import Settings
    from deepscreen.db.retraining import RunStatus
    from training.retrain import retrain

    outcome = retrain(Settings.from_env(), trigger=args.trigger)
    if outcome.report is not None:
        print(json.dumps(outcome.report, indent=2))
    print(f"retraining run {outcome.run_id}: {outcome.status}", flush=True)
    if outcome.error:
        print(f"deepscreen: retraining failed: {outcome.error}", file=sys.stderr)
    codes = {RunStatus.REGISTERED.value: 0, RunStatus.REFUSED.value: 3}
    return codes.get(outcome.status, 1)


def register_training_worker(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "training-worker",
        help="run the Celery worker of the training queue (retraining; needs the training extra)",
        description="Consumes only the training queue, one run at a time (solo pool): "
        "deepscreen.retrain and deepscreen.check_retrain. Run exactly one. Runs it finds "
        "still marked running when it starts were interrupted and are marked failed.",
    )
    p.add_argument(
        "--loglevel", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO", type=str.upper
    )
    p.add_argument("--hostname", default=None, metavar="NAME", help="node name")
    p.set_defaults(func=run_training_worker)


def training_worker_argv(args: argparse.Namespace) -> list[str]:
    """The ``celery worker`` command line of the training worker."""
    import os

    from deepscreen.taskqueue import TRAINING_QUEUE

    return [
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--queues={TRAINING_QUEUE}",
        f"--loglevel={args.loglevel}",
        f"--hostname={args.hostname or f'deepscreen-training-{os.getpid()}@%h'}",
        "--without-mingle",
        "--without-gossip",
    ]


def run_training_worker(args: argparse.Namespace) -> int:
    _restart_on_tcmalloc(args)
    from deepscreen.config import Settings
    from deepscreen.db.session import make_engine, make_session_factory
    from deepscreen.retraining import fail_interrupted_runs
    from training.tasks import create_training_app

    settings = Settings.from_env()
    engine = make_engine(settings)
    try:
        fail_interrupted_runs(session_factory=make_session_factory(engine))
    finally:
        engine.dispose()
    app = create_training_app(settings)
    return int(app.start(training_worker_argv(args)) or 0)


def _machine() -> dict[str, Any]:
    import os
    import platform

    from training.allocator import allocator_name

    return {
        "cpus": os.cpu_count(),
        "processor": platform.machine(),
        "system": platform.system(),
        "allocator": allocator_name(),
    }


def _print_metrics(metrics: dict[str, Any]) -> None:
    print(f"{'set':<28} {'n':>5} {'AUC':>6} {'acc@op':>7} {'acc@.5':>7} {'FPR@op':>7}")
    rows = (
        [("all", metrics["overall"])]
        + list(metrics["per_source"].items())
        + [(f"ciplab {g}", m) for g, m in metrics["per_ciplab_difficulty"].items()]
    )
    for name, m in rows:
        op, half = m["operating"], m["half"]
        auc = "n/a" if op["roc_auc"] is None else f"{op['roc_auc']:.3f}"
        print(
            f"{name:<28} {op['n']:>5} {auc:>6} {op['accuracy']:>7.3f} {half['accuracy']:>7.3f} {op['fpr']:>7.3f}"
        )


def _print_summary(card: dict[str, Any]) -> None:
    print(
        f"model {card['version'][:12]}  threshold {card['threshold']:.4f}  "
        f"size {card['export']['size_bytes'] / 1e6:.2f} MB  parity max diff {card['parity']['max_abs_score_diff']:.5f}"
    )
    _print_metrics(card["metrics"]["validation"])
