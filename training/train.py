"""Two-phase transfer learning with a quality gate.

Phase 1 trains the head on a frozen ImageNet backbone; phase 2 fine-tunes the upper
backbone at a low learning rate with early stopping on validation ROC-AUC. A model
below `hp.min_val_auc` is refused before anything is exported.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from deepscreen.config import Settings
from deepscreen.errors import DeepscreenError
from deepscreen.faces import FaceStage
from deepscreen.imaging import Preprocessing
from training.data import (
    LoadedSplit,
    Sample,
    count_table,
    label_id,
    load_pixels,
    read_source,
    split_samples,
)
from training.hparams import HParams
from training.model import (
    build_model,
    fitted_part,
    make_dataset,
    seed_new_classes,
    set_score_weights,
    set_trainable,
)

log = logging.getLogger(__name__)


class QualityGateFailed(DeepscreenError):
    """The trained model is below the configured validation bar; nothing was exported."""


@dataclass
class TrainingResult:
    model: keras.Model
    hp: HParams
    train: LoadedSplit
    valid: LoadedSplit
    val_scores: np.ndarray
    val_auc: float
    history: dict[str, list[float]]
    wall_time_s: float
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: With ``average_last_epochs``: the weights of the fitted model (the model, or its
    #: softmax over kinds) early stopping kept, before the average replaced them.
    unaveraged_weights: list[np.ndarray] | None = None


def preprocessing_for(hp: HParams) -> Preprocessing:
    return Preprocessing(height=hp.image_size, width=hp.image_size)


def face_stage_for(hp: HParams) -> FaceStage | None:
    """The face stage the model is trained and served with, or None (whole images)."""
    if not hp.face_stage:
        return None
    return FaceStage(
        margin=hp.face_margin,
        min_confidence=hp.face_min_confidence,
        min_face_px=hp.face_min_px,
        min_detail=hp.face_min_detail,
        min_crop_side=hp.face_min_crop_side,
    )


def exclude(samples: list[Sample], spec: str) -> list[Sample]:
    """``samples`` without the sources named in ``spec`` ("a,b:fake": all of a, b's fakes)."""
    out = samples
    for item in filter(None, (part.strip() for part in spec.split(","))):
        source, _, label = item.partition(":")
        drop = None if not label else label_id(label)
        out = [s for s in out if not (s.source == source and drop in (None, s.label))]
    return out


def sample_weights(samples: list[Sample], hp: HParams) -> np.ndarray | None:
    """Per-sample weights that balance classes and, optionally, sources; mean 1.

    A sample with an explicit ``weight`` (a moderator correction) stays out of the
    balancing and counts ``weight`` times an average balanced sample of its class,
    so a handful of corrections is neither drowned nor made a source of its own.
    """
    base = [s for s in samples if s.weight is None]
    explicit = len(base) < len(samples)
    if not hp.class_weighting and not hp.balance_sources and not explicit:
        return None
    if hp.class_weighting or hp.balance_sources:
        key = (lambda s: (s.source, s.label)) if hp.balance_sources else (lambda s: s.label)
        counts = Counter(key(s) for s in base)
        balanced = {id(s): 1.0 / counts[key(s)] for s in base}
    else:
        balanced = {id(s): 1.0 for s in base}
    # An average balanced sample of each class, the unit of the explicit weights.
    unit = {
        label: float(np.mean(ws))
        for label in (0, 1)
        if (ws := [balanced[id(s)] for s in base if s.label == label])
    }
    fallback = float(np.mean(list(balanced.values()))) if balanced else 1.0
    w = np.array(
        [
            balanced[id(s)] if s.weight is None else s.weight * unit.get(s.label, fallback)
            for s in samples
        ]
    )
    return w / w.mean() if w.mean() > 0 else None


def describe_sources(splits: dict[str, list[Sample]]) -> list[dict[str, Any]]:
    """Per-source counts for the model card, with licence notes for the known sets."""
    licences = {
        "ciplab": "Yonsei CIPLab 'Real and Fake Face Detection' (Kaggle); research use, no explicit licence",
        "ffhq-stylegan": "140k Real and Fake Faces: FFHQ (CC BY-NC-SA 4.0) and StyleGAN (NVIDIA, non-commercial)",
    }
    out: dict[str, dict[str, Any]] = {}
    for split, samples in splits.items():
        for s in samples:
            entry = out.setdefault(
                s.source,
                {
                    "name": s.source,
                    "counts": {},
                    "licence": licences.get(s.source, "as supplied by the user"),
                },
            )
            by_label = entry["counts"].setdefault(split, {"real": 0, "fake": 0})
            by_label["real" if s.label == 0 else "fake"] += 1
    return list(out.values())


class _FakeAUC(keras.metrics.AUC):
    """ROC-AUC of P(fake) = 1 - P(real) from one-hot family targets and softmax outputs."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(1.0 - y_true[:, 0], 1.0 - y_pred[:, 0], sample_weight)


class _FakeAccuracy(keras.metrics.BinaryAccuracy):
    """Real/fake accuracy at 0.5 from one-hot family targets and softmax outputs."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(
            1.0 - y_true[:, :1], 1.0 - y_pred[:, :1], sample_weight=sample_weight
        )


def parent_kinds(hp: HParams) -> list[str]:
    """The kinds of fake ``hp`` already names (a parent's classes), in class order."""
    return [n for n in hp.fake_class_names.split(",") if n]


def family_names(hp: HParams, samples: list[Sample]) -> list[str]:
    """The fake sources in class order: ``hp.fake_class_names`` first (a parent's),
    then the new ones in ``samples``, sorted; ValueError when they outnumber the
    classes."""
    names = parent_kinds(hp)
    names += sorted({s.source for s in samples if s.label == 1} - set(names))
    if len(names) + 1 > hp.fake_classes:
        raise ValueError(
            f"{len(names)} kinds of fake ({', '.join(names)}) need fake_classes >= "
            f"{len(names) + 1}, not {hp.fake_classes}"
        )
    return names


def family_targets(samples: list[Sample], names: list[str], classes: int) -> np.ndarray:
    """One-hot (N, classes) targets: class 0 real, class 1 + names.index(source) fake."""
    index = {name: i + 1 for i, name in enumerate(names)}
    ids = [0 if s.label == 0 else index[s.source] for s in samples]
    return np.eye(classes, dtype="float32")[ids]


class TailAverage(keras.callbacks.Callback):
    """Stochastic weight averaging over a schedule's tail: the mean of the model's
    weights (batch-norm statistics included) at the end of each of the last ``n``
    of ``epochs`` epochs, set on the model when the phase ends, in place of the
    weights early stopping restored. When early stopping ends the phase inside the
    tail, the tail's epochs that ran are averaged; with fewer than two of them,
    nothing is (early stopping's weights stand)."""

    def __init__(self, n: int, epochs: int) -> None:
        super().__init__()
        self.first = max(0, epochs - n)
        self.count = 0
        self.sums: list[np.ndarray] | None = None
        #: The weights early stopping kept (its best epoch's), before the average.
        self.kept: list[np.ndarray] | None = None
        self.applied = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < self.first:
            return
        weights = [w.astype(np.float64) for w in self.model.get_weights()]
        self.sums = weights if self.sums is None else [a + w for a, w in zip(self.sums, weights)]
        self.count += 1

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.sums is None or self.count < 2:
            log.info("weight averaging not applied: %d epoch(s) of the tail ran", self.count)
            return
        self.kept = self.model.get_weights()
        self.model.set_weights(
            [(s / self.count).astype(w.dtype) for s, w in zip(self.sums, self.kept)]
        )
        self.applied = True
        log.info("weights averaged over the last %d epochs", self.count)


def _fit(
    model: keras.Model, train_ds, val_ds, epochs: int, lr: float | Any, hp: HParams, callbacks: list
) -> dict[str, list[float]]:
    if hp.fake_classes:
        loss: keras.losses.Loss = keras.losses.CategoricalCrossentropy(
            label_smoothing=hp.label_smoothing
        )
        metrics: list = [_FakeAUC(name="auc"), _FakeAccuracy(name="accuracy")]
    else:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=hp.label_smoothing)
        metrics = [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=lr, weight_decay=hp.weight_decay),
        loss=loss,
        metrics=metrics,
    )
    # The dataset shuffles itself (training.model.make_dataset).
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        callbacks=callbacks,
        verbose=2,
        shuffle=False,
    )
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def train(sources: list[str], hp: HParams, work_dir: Path) -> TrainingResult:
    """Read, split and decode the sources, train both phases, and apply the gate."""
    return train_samples([s for spec in sources for s in read_source(spec)], hp, work_dir)


def train_samples(
    samples: list[Sample],
    hp: HParams,
    work_dir: Path,
    *,
    initial_weights: Path | None = None,
    settings: Settings | None = None,
) -> TrainingResult:
    """Split and decode ``samples``, train both phases, and apply the gate.

    ``initial_weights`` (a whole model's ``model.weights.h5``, e.g. the active model's)
    replaces ``hp.weights`` as the starting point; the architecture must match ``hp``.
    ``settings`` gives the S3 credentials of samples that live in a bucket.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(hp.seed)
    if hp.deterministic:
        tf.config.experimental.enable_op_determinism()
    work_dir.mkdir(parents=True, exist_ok=True)
    splits = split_samples(exclude(samples, hp.exclude_sources), hp.val_fraction, hp.seed)
    log.info("samples per split, source and label:\n%s", count_table(splits))
    print(count_table(splits), flush=True)  # the CLI's users want these counts on screen
    if not splits["train"] or not splits["valid"]:
        raise ValueError("training needs both a train and a validation split")

    prep, stage = preprocessing_for(hp), face_stage_for(hp)
    train_set = load_pixels(splits["train"], prep, settings=settings, face_stage=stage)
    valid_set = load_pixels(splits["valid"], prep, settings=settings, face_stage=stage)
    for path, reason in train_set.failed + valid_set.failed:
        print(f"skipped {path}: {reason}", flush=True)
    if len(set(train_set.labels.tolist())) < 2 or len(set(valid_set.labels.tolist())) < 2:
        raise ValueError("both labels must be present in the train and validation splits")

    weights = sample_weights(train_set.samples, hp)
    train_y, valid_y = train_set.labels, valid_set.labels
    known, names = len(parent_kinds(hp)), []
    if hp.fake_classes:
        names = family_names(hp, train_set.samples + valid_set.samples)
        hp = replace(hp, fake_class_names=",".join(names))
        log.info("fake classes: %s", hp.fake_class_names)
        train_y = family_targets(train_set.samples, names, hp.fake_classes)
        valid_y = family_targets(valid_set.samples, names, hp.fake_classes)
    train_ds = make_dataset(train_set.pixels, train_y, weights, hp, training=True)
    val_ds = make_dataset(valid_set.pixels, valid_y, None, hp, training=False)

    if initial_weights is None:
        model = build_model(hp)
    else:
        model = build_model(hp, weights="none")
        model.load_weights(initial_weights)
        log.info("starting from the weights in %s", initial_weights)
        set_score_weights(model, hp)  # the file carries its own recipe's score weights
        if hp.fake_classes:
            seed_new_classes(model, known, len(names))
    fitted = fitted_part(model, hp)
    history: dict[str, list[float]] = {}
    unaveraged: list[np.ndarray] | None = None
    if hp.head_epochs > 0:
        set_trainable(model, None)
        for k, v in _fit(
            fitted, train_ds, val_ds, hp.head_epochs, hp.head_learning_rate, hp, []
        ).items():
            history[f"head_{k}"] = v
    if hp.fine_tune_epochs > 0:
        n = set_trainable(model, hp.fine_tune_from, freeze_batchnorm=hp.freeze_batchnorm)
        log.info("fine-tuning the top %d backbone layers", n)
        stop = keras.callbacks.EarlyStopping(
            monitor="val_auc",
            mode="max",
            patience=hp.early_stopping_patience,
            restore_best_weights=True,
        )
        lr: float | Any = hp.fine_tune_learning_rate
        if hp.lr_schedule == "cosine":
            lr = keras.optimizers.schedules.CosineDecay(
                lr, decay_steps=hp.fine_tune_epochs * int(train_ds.cardinality())
            )
        callbacks: list = [stop]
        tail = None
        if hp.average_last_epochs:
            tail = TailAverage(hp.average_last_epochs, hp.fine_tune_epochs)
            callbacks.append(tail)
        for k, v in _fit(fitted, train_ds, val_ds, hp.fine_tune_epochs, lr, hp, callbacks).items():
            history[f"fine_{k}"] = v
        if tail is not None and tail.applied:
            unaveraged = tail.kept

    val_scores = predict(model, valid_set.pixels, hp.batch_size)
    from sklearn.metrics import roc_auc_score

    val_auc = float(roc_auc_score(valid_set.labels, val_scores))
    if unaveraged is not None:
        averaged = fitted.get_weights()
        fitted.set_weights(unaveraged)
        plain = predict(model, valid_set.pixels, hp.batch_size)
        fitted.set_weights(averaged)
        history["unaveraged_val_auc"] = [float(roc_auc_score(valid_set.labels, plain))]
        history["averaged_val_auc"] = [val_auc]
        print(
            f"validation ROC-AUC without weight averaging {history['unaveraged_val_auc'][0]:.4f}"
            f", with the last {hp.average_last_epochs} epochs' average {val_auc:.4f}",
            flush=True,
        )
    (work_dir / "history.json").write_text(json.dumps(history, indent=2))
    model.save(work_dir / "model.keras")
    wall = time.monotonic() - started
    print(
        f"validation ROC-AUC {val_auc:.4f} (gate {hp.min_val_auc}); trained in {wall:.0f} s",
        flush=True,
    )
    if val_auc < hp.min_val_auc:
        raise QualityGateFailed(
            f"validation ROC-AUC {val_auc:.4f} is below the gate {hp.min_val_auc}; not exported"
        )
    return TrainingResult(
        model,
        hp,
        train_set,
        valid_set,
        val_scores,
        val_auc,
        history,
        wall,
        describe_sources(splits),
        unaveraged,
    )


def predict(model: keras.Model, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """P(fake) for uint8 pixels, as a flat float array."""
    return model.predict(pixels.astype("float32"), batch_size=batch_size, verbose=0).reshape(-1)
