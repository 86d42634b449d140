"""TFLite export with a parity check, evaluation and the model card.

The exported file is run through `deepscreen.inference.Classifier`, the worker's own
serving class, and compared with Keras on the same validation pixels; an export
whose scores differ by more than `hp.parity_tolerance`, or whose labels differ at
the operating threshold, is refused and removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from deepscreen.errors import DeepscreenError
from deepscreen.inference import Classifier
from training.data import LABELS, LoadedSplit
from training.evaluate import (
    evaluate_scores,
    fpr_per_real_source,
    markdown_report,
    threshold_for_sources,
    write_plots,
)
from training.fp16 import fold_and_round
from training.hparams import HParams
from training.train import face_stage_for, predict, preprocessing_for

log = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
CARD_FILE = "model_card.json"
#: The Keras weights (before any float16 rounding), so retraining can start from them.
WEIGHTS_FILE = "model.weights.h5"
MODEL_NAME = "deepscreen-mobilenetv2"


class ParityError(DeepscreenError):
    """The exported TFLite model disagrees with the Keras model."""


def convert(model: keras.Model, dtype: str) -> bytes:
    """Keras -> TFLite flatbuffer; float16 weights by default (half the size, same scores)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if dtype == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "numpy", "pillow", "ai-edge-litert"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def export(
    model: keras.Model,
    valid: LoadedSplit,
    hp: HParams,
    out_dir: Path,
    *,
    sources: list[dict[str, Any]] | None = None,
    training_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write model.tflite, model_card.json, report.md, plots and the Keras weights
    (``model.weights.h5``, to retrain from) into ``out_dir``.

    Everything is built in a temporary folder and moved into place only after the
    parity check passes, so a failed export leaves ``out_dir`` as it was.
    """
    rounding: dict[str, Any] = {}
    trained = model  # its weights are saved as trained, before any rounding
    if hp.export_dtype == "float16":
        before = predict(model, valid.pixels, hp.batch_size)
        model = fold_and_round(model)
        keras_scores = predict(model, valid.pixels, hp.batch_size)
        # What float16 weights change, measured; the card's metrics are of the rounded model.
        rounding = {
            "batchnorm_folded": True,
            "max_abs_score_change": float(np.max(np.abs(keras_scores - before)))
            if len(before)
            else 0.0,
        }
        log.info(
            "float16 rounding moved validation scores by up to %.5f",
            rounding["max_abs_score_change"],
        )
    else:
        keras_scores = predict(model, valid.pixels, hp.batch_size)
    flatbuffer = convert(model, hp.export_dtype)
    sha = hashlib.sha256(flatbuffer).hexdigest()
    prep = preprocessing_for(hp)
    with tempfile.TemporaryDirectory(prefix="deepscreen-export-") as tmp:
        stage = Path(tmp)
        (stage / MODEL_FILE).write_bytes(flatbuffer)
        card: dict[str, Any] = {
            "schema": 1,
            "name": MODEL_NAME,
            "version": sha,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "labels": list(LABELS),
            "output": "sigmoid",
            "input": {"height": hp.image_size, "width": hp.image_size, "channels": 3},
            "preprocessing": prep.to_card(),
            "threshold": 0.5,
        }
        face_stage = face_stage_for(hp)
        if face_stage is not None:
            card["face_stage"] = face_stage.to_card()
        _write_card(stage, card)
        shipped = Classifier(stage)
        tflite_scores = shipped.predict_pixels(valid.pixels)
        # Each image's score as serving gives it: its best face's.
        served = valid.best_face_scores(tflite_scores, shipped.predict_pixels)

        # The operating threshold is chosen on the shipped artefact's own scores through
        # the serving rule, with every real source of the calibration (validation)
        # split counted equally.
        valid_sources = [s.source for s in valid.samples]
        at_fpr = threshold_for_sources(served, valid.labels, valid_sources, hp.target_fpr)
        threshold = at_fpr if hp.threshold_policy == "fpr" else 0.5
        diff = float(np.max(np.abs(tflite_scores - keras_scores))) if len(keras_scores) else 0.0
        flips = int(np.sum((tflite_scores >= threshold) != (keras_scores >= threshold)))
        log.info("parity: max |tflite - keras| = %.5f, label flips = %d", diff, flips)
        if diff > hp.parity_tolerance or flips:
            raise ParityError(
                f"TFLite and Keras disagree on {len(keras_scores)} validation images: max score "
                f"difference {diff:.5f} (tolerance {hp.parity_tolerance}), {flips} label(s) differ"
            )

        ev = evaluate_scores(served, valid.samples, threshold)
        card.update(
            threshold=threshold,
            thresholds={
                "operating": threshold,
                "policy": hp.threshold_policy,
                "target_fpr": hp.target_fpr,
                "at_target_fpr": at_fpr,
                "half": 0.5,
                "calibration": (
                    "validation split, each image scored as serving scores it (its best "
                    "face's score); false-positive rate pooled over the real sources, "
                    "each weighted equally, <= target_fpr, and <= target_fpr + 0.02 on each"
                ),
                "fpr_per_real_source": fpr_per_real_source(
                    served, valid.labels, valid_sources, threshold
                ),
                "images_with_more_than_one_face": len(valid.other_faces),
            },
            metrics={"validation": ev.to_dict()},
            parity={
                "max_abs_score_diff": diff,
                "label_flips": flips,
                "n": len(keras_scores),
                "tolerance": hp.parity_tolerance,
            },
            export={"dtype": hp.export_dtype, "size_bytes": len(flatbuffer), **rounding},
            training={**(training_info or {}), "sources": sources or []},
            hyperparameters=hp.to_dict(),
            libraries=library_versions(),
            intended_use=(
                "Flag face photos that are likely AI-generated or manipulated, for human review. "
                "Trained on research, non-commercial data (see training.sources); not for "
                "commercial use without retraining on licensed data. Scores are not proof."
            ),
        )
        plots = write_plots(served, valid.samples, threshold, stage)
        # Weights only, no optimizer state: about twice the size of a float16 .tflite.
        save_weights_only(trained, stage / WEIGHTS_FILE)
        # What `deepscreen adapt` and retraining continue from, as trained (not rounded).
        card["weights"] = {
            "file": WEIGHTS_FILE,
            "sha256": hashlib.sha256((stage / WEIGHTS_FILE).read_bytes()).hexdigest(),
            "size_bytes": (stage / WEIGHTS_FILE).stat().st_size,
            "format": "Keras weights of the whole model (training.model.build_model)",
        }
        card["artefacts"] = [MODEL_FILE, CARD_FILE, "report.md", *plots, WEIGHTS_FILE]
        (stage / "report.md").write_text(
            markdown_report(
                ev,
                f"{MODEL_NAME} {sha[:12]}",
                {
                    "parity": card["parity"],
                    "export": card["export"],
                    "training": {k: v for k, v in card["training"].items() if k != "history"},
                },
            )
        )
        _write_card(stage, card)
        Classifier(stage)  # the final card must load cleanly in the serving class
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in card["artefacts"]:
            shutil.copy2(stage / name, out_dir / name)
    log.info("exported %s (%d bytes) to %s", sha[:12], len(flatbuffer), out_dir)
    return card


def save_weights_only(model: keras.Model, path: Path) -> None:
    """The model's weights without the optimizer's state (which a compiled model's
    ``save_weights`` adds: 17 MB of AdamW moments beside 9 MB of weights)."""
    model.save_weights(path)
    import h5py

    with h5py.File(path, "a") as fh:
        if "optimizer" in fh:
            del fh["optimizer"]
    # h5py does not give deleted space back: rewrite the file compactly.
    tmp = path.with_suffix(".compact.h5")
    with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for key in src:
            src.copy(src[key], dst, name=key)
    tmp.replace(path)


def _write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
