"""`deepscreen adapt`: teach an exported model a new kind of fake from moderators' flags.

The model continues from its own Keras weights (``model.weights.h5`` in its folder),
fine-tuning the upper backbone on the corrections plus a replay sample of the data it
was trained on, so old sources are not forgotten. It keeps the parent's preprocessing
contract (face stage included) and validation split, so the threshold is re-chosen by
the same calibration rule on the same real images, with the held-out part of the
corrections added. A head refit alone cannot learn a new generator (measured, see
the README); the backbone's upper blocks must move, at a low learning rate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from deepscreen.config import Settings
from deepscreen.errors import DeepscreenError
from deepscreen.inference import CARD_FILE, Classifier
from training.data import Sample, read_manifest, read_source, split_samples
from training.export import WEIGHTS_FILE, export
from training.hparams import HParams
from training.model import set_score_weights
from training.train import TrainingResult, predict, train_samples

log = logging.getLogger(__name__)

#: Source name of the corrections in the adapted model's data and report.
CORRECTIONS = "corrections"


class AdaptError(DeepscreenError):
    """The parent model or the corrections cannot be adapted from."""


@dataclass(frozen=True)
class AdaptOptions:
    """How an adaptation run trains; defaults documented in the README."""

    #: Fine-tuning epochs (early stopping on validation ROC-AUC, best weights kept).
    epochs: int = 5
    learning_rate: float = 1e-4
    #: First backbone layer trained: from block 4 up, as in full training, so that the
    #: low-level filters where a generator's pixel traces show can move too.
    fine_tune_from: str = "block_4_expand"
    #: Keep BatchNorm in inference mode with the parent's statistics: a few hundred
    #: images cannot then shift what every base source's features are normalised by.
    freeze_batchnorm: bool = False
    #: Each correction counts this many times an average base image of its class.
    correction_weight: float = 12.0
    #: Each trained correction appears this many times per epoch, each copy with
    #: ``correction_weight / correction_repeat``: the same total weight, spread over
    #: more steps and differently augmented copies.
    correction_repeat: int = 1
    #: Base images replayed: this many per correction, at least ``replay_min``.
    replay_per_correction: int = 6
    replay_min: int = 1200
    #: Share of the corrections held out for validation (by a hash of the file name).
    holdout: float = 0.2
    #: Share of the adapted weights when they are averaged with the parent's (1.0: as
    #: trained). Averaging keeps more of what the parent knew at little cost to what
    #: the corrections taught (weight-space ensembling, Wortsman et al., CVPR 2022).
    interpolate: float = 0.8
    seed: int = 1337


def parent_hparams(card: dict[str, Any]) -> HParams:
    """The hyperparameters the parent was trained with (its card), unknown keys ignored."""
    known = {f.name for f in fields(HParams)}
    recorded = {k: v for k, v in (card.get("hyperparameters") or {}).items() if k in known}
    # Cards from before fake_classes existed describe a sigmoid output.
    recorded.setdefault("fake_classes", 0)
    # ... and cards from before fake_class_weights weighted every kind of fake alike.
    recorded.setdefault("fake_class_weights", "")
    stage = card.get("face_stage")
    if isinstance(stage, dict):
        # The card's face stage is what serving uses: adapt cuts the same crops.
        recorded.update(
            face_stage=True,
            face_margin=stage.get("margin", HParams.face_margin),
            face_min_confidence=stage.get("min_confidence", HParams.face_min_confidence),
            face_min_px=stage.get("min_face_px", HParams.face_min_px),
            face_min_detail=stage.get("min_detail", HParams.face_min_detail),
            face_min_crop_side=stage.get("min_crop_side", HParams.face_min_crop_side),
        )
    else:
        recorded["face_stage"] = False
    return replace(HParams(), **recorded)


def parent_weights(model_dir: Path) -> Path:
    """The parent's Keras weights, or AdaptError saying why there are none."""
    weights = model_dir / WEIGHTS_FILE
    if not (model_dir / CARD_FILE).is_file():
        raise AdaptError(f"{model_dir} is not an exported model directory (no {CARD_FILE})")
    if not weights.is_file():
        raise AdaptError(
            f"{model_dir} has no Keras weights ({WEIGHTS_FILE}): adapt continues from a "
            "model's own weights. Export the model with this version of deepscreen "
            "(`deepscreen train` writes them), or retrain it in full."
        )
    return weights


def _stable(seed: int, sample: Sample) -> str:
    return hashlib.sha256(f"{seed}:{sample.path.name}:{sample.url}".encode()).hexdigest()


def replay_sample(train: list[Sample], n: int, seed: int) -> list[Sample]:
    """``n`` base training images, spread evenly over (source, label), chosen by hash."""
    groups: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s in train:
        groups[(s.source, s.label)].append(s)
    for members in groups.values():
        members.sort(key=lambda s: _stable(seed, s))
    out: list[Sample] = []
    quota = max(1, n // max(1, len(groups)))
    for members in groups.values():
        out += members[:quota]
    # Fill what small groups could not from the larger ones, round-robin.
    spare = [s for members in groups.values() for s in members[quota:]]
    spare.sort(key=lambda s: _stable(seed + 1, s))
    return out + spare[: max(0, n - len(out))]


def adaptation_samples(
    base: list[Sample], fixes: list[Sample], hp: HParams, opts: AdaptOptions
) -> list[Sample]:
    """Replay + corrections for training, the parent's validation split + the held-out
    corrections for validation; every sample's split set explicitly."""
    splits = split_samples(base, hp.val_fraction, hp.seed)
    n_replay = max(opts.replay_min, opts.replay_per_correction * len(fixes))
    replay = [
        replace(s, split="train") for s in replay_sample(splits["train"], n_replay, opts.seed)
    ]
    valid = [replace(s, split="valid") for s in splits["valid"]]
    ordered = sorted(fixes, key=lambda s: _stable(opts.seed, s))
    n_hold = int(len(ordered) * opts.holdout) if len(ordered) >= 10 else 0
    held = [replace(s, split="valid", weight=None) for s in ordered[:n_hold]]
    repeat = max(1, opts.correction_repeat)
    trained = [
        replace(s, split="train", weight=opts.correction_weight / repeat) for s in ordered[n_hold:]
    ] * repeat
    return replay + trained + valid + held


def read_corrections(csv_path: Path) -> list[Sample]:
    """The corrections manifest's rows as samples of the ``corrections`` source."""
    try:
        rows = read_manifest(csv_path)
    except (OSError, ValueError) as exc:
        raise AdaptError(f"cannot read the corrections {csv_path}: {exc}") from exc
    if not rows:
        raise AdaptError(f"{csv_path} lists no corrections")
    return [replace(s, source=CORRECTIONS) for s in rows]


def adapt_hparams(parent: HParams, opts: AdaptOptions, overrides: dict[str, Any]) -> HParams:
    """The parent's recipe, with the fine-tuning of an adaptation run."""
    return parent.with_overrides(
        {
            "weights": "none",
            "head_epochs": 0,
            "fine_tune_epochs": opts.epochs,
            "fine_tune_learning_rate": opts.learning_rate,
            "fine_tune_from": opts.fine_tune_from,
            "freeze_batchnorm": opts.freeze_batchnorm,
            "early_stopping_patience": max(2, opts.epochs // 2),
            # Issue 13's runs were measured without weight averaging (README).
            "average_last_epochs": 0,
            **overrides,
        }
    )


def train_adapted(
    parent_dir: Path,
    fixes: list[Sample],
    base: list[Sample],
    work_dir: Path,
    *,
    opts: AdaptOptions | None = None,
    overrides: dict[str, Any] | None = None,
    settings: Settings | None = None,
) -> tuple[TrainingResult, HParams, dict[str, Any]]:
    """Fine-tune the parent in ``parent_dir`` on ``fixes`` + replay of ``base``.

    Returns the training result, the hyperparameters and what the card records of
    the adaptation (parent, corrections, replay).
    """
    opts = opts or AdaptOptions()
    weights = parent_weights(parent_dir)
    parent = Classifier(parent_dir, num_threads=1)
    hp = adapt_hparams(parent_hparams(parent.card), opts, overrides or {})
    if (hp.face_stage, hp.image_size) != (parent.face_stage is not None, parent.input_size[0]):
        raise AdaptError(f"{parent_dir}: the card's hyperparameters do not match its model")
    samples = adaptation_samples(base, fixes, hp, opts)
    n_replay = sum(1 for s in samples if s.source != CORRECTIONS and s.split == "train")
    n_held = sum(1 for s in samples if s.source == CORRECTIONS and s.split == "valid")
    result = train_samples(samples, hp, work_dir, initial_weights=weights, settings=settings)
    if opts.interpolate < 1.0:
        interpolate_with(result, weights, opts.interpolate)
    info = {
        "adapted_from": parent.version,
        "parent_name": parent.card.get("name"),
        "corrections": len(fixes),
        # Every correction is trained (in correction_repeat copies) or held out.
        "corrections_trained": len(fixes) - n_held,
        "corrections_held_out": n_held,
        "correction_weight": opts.correction_weight,
        "replay_images": n_replay,
        "options": opts.__dict__,
    }
    return result, result.hp, info


def interpolate_with(result: TrainingResult, parent_weights_file: Path, share: float) -> None:
    """Average ``result``'s model with the parent's weights (``share`` of the adapted
    ones), in place, and re-score its validation split."""
    from sklearn.metrics import roc_auc_score

    adapted = result.model.get_weights()
    result.model.load_weights(parent_weights_file)
    parent = result.model.get_weights()
    result.model.set_weights(
        [share * a + (1 - share) * p for a, p in zip(adapted, parent, strict=True)]
    )
    set_score_weights(result.model, result.hp)  # fixed by the recipe, not averaged
    result.val_scores = predict(result.model, result.valid.pixels, result.hp.batch_size)
    result.val_auc = float(roc_auc_score(result.valid.labels, result.val_scores))


def base_specs(card: dict[str, Any], given: list[str] | None) -> list[str]:
    """The base data: ``given``, else the data the parent was trained on when at hand."""
    if given:
        return given
    recorded = [str(d) for d in (card.get("training") or {}).get("data") or []]
    present = [d for d in recorded if Path(d.partition(":")[2] or d).exists()]
    if not present:
        raise AdaptError(
            "no base data to replay: give --data (the parent's card names "
            + (", ".join(recorded) if recorded else "none")
            + (", not found here)" if recorded else ")")
        )
    return present


def adapt(
    parent_dir: Path,
    corrections_csv: Path,
    out_dir: Path,
    *,
    data: list[str] | None = None,
    opts: AdaptOptions | None = None,
    overrides: dict[str, Any] | None = None,
    settings: Settings | None = None,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Adapt, export (parity check, card, report, plots, weights) and return the card."""
    import tempfile

    started = time.monotonic()
    parent_weights(parent_dir)  # fail before reading anything else
    card = Classifier(parent_dir, num_threads=1).card
    fixes = read_corrections(corrections_csv)
    specs = base_specs(card, data)
    base = [s for spec in specs for s in read_source(spec)]
    with tempfile.TemporaryDirectory(prefix="deepscreen-adapt-") as tmp:
        result, hp, info = train_adapted(
            parent_dir,
            fixes,
            base,
            work_dir or Path(tmp),
            opts=opts,
            overrides=overrides,
            settings=settings,
        )
    unreadable = [(str(path), reason) for path, reason in result.train.failed + result.valid.failed]
    info.update(
        corrections_file=str(corrections_csv),
        corrections_sha256=hashlib.sha256(corrections_csv.read_bytes()).hexdigest(),
        unreadable=unreadable,
        data=specs,
        train_wall_time_s=round(result.wall_time_s, 1),
        val_auc_keras=result.val_auc,
        history=result.history,
    )
    out = export(
        result.model, result.valid, hp, out_dir, sources=result.sources, training_info=info
    )
    out["training"]["total_wall_time_s"] = round(time.monotonic() - started, 1)
    (out_dir / CARD_FILE).write_text(json.dumps(out, indent=2) + "\n")
    return out
