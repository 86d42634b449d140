"""Hyperparameter loading and the evaluation arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.evaluate import binary_metrics, threshold_at_fpr
from training.hparams import HParams, load_hparams


def test_hparams_toml_restates_the_documented_defaults() -> None:
    assert load_hparams() == HParams()


def test_hparams_overrides_are_typed_and_checked(tmp_path: Path) -> None:
    f = tmp_path / "hp.toml"
    f.write_text("image_size = 64\naugment = false\n")
    hp = load_hparams(f, {"dropout": "0.5", "flip": "no"})
    assert (hp.image_size, hp.augment, hp.dropout, hp.flip) == (64, False, 0.5, False)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        load_hparams(f, {"learning_rat": "1"})
    with pytest.raises(ValueError):
        HParams(export_dtype="int8")


def test_threshold_at_fpr_meets_the_target_with_margin() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.beta(2, 5, 400), rng.beta(5, 2, 400)])
    labels = np.array([0] * 400 + [1] * 400)
    t = threshold_at_fpr(scores, labels, 0.05)
    fpr = float(np.mean(scores[labels == 0] >= t))
    assert fpr <= 0.05 and fpr >= 0.04  # as close to the target as the data allows
    assert not np.any(np.isclose(scores, t, atol=1e-9))  # never exactly on a sample


def test_binary_metrics_on_a_known_example() -> None:
    scores = np.array([0.1, 0.6, 0.4, 0.9])
    labels = np.array([0, 0, 1, 1])
    m = binary_metrics(scores, labels, 0.5)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert (m["accuracy"], m["precision"], m["recall"], m["fpr"]) == (0.5, 0.5, 0.5, 0.5)
    assert m["roc_auc"] == pytest.approx(0.75)
