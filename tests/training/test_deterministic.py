"""``deterministic``: the same data, seed and machine train the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_model import TINY

from training.data import read_tree
from training.hparams import load_hparams
from training.train import train_samples

pytestmark = pytest.mark.slow


def test_two_deterministic_runs_train_the_same_weights(
    synthetic_tree: Path, tmp_path: Path
) -> None:
    # Given the tiny recipe, which turns determinism on
    hp = load_hparams(
        None,
        dict(p.split("=", 1) for p in [*TINY, "fine_tune_epochs=4", "min_val_auc=0"]),
    )
    samples = read_tree(synthetic_tree)
    # When it trains twice in one process
    first = train_samples(samples, hp, tmp_path / "a")
    second = train_samples(samples, hp, tmp_path / "b")
    # Then every weight and every validation score is the same, bit for bit
    for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.val_scores, second.val_scores)
