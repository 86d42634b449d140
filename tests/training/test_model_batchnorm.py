"""BatchNorm in training: frozen when asked, whatever the weights start from."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="the training extra is not installed")

import keras

from training.adapt import AdaptOptions, adapt_hparams
from training.hparams import HParams
from training.model import build_model, set_trainable

TINY = {"image_size": 32, "alpha": 0.35, "weights": "none"}


def _moving_means_after_a_step(hp: HParams) -> tuple[np.ndarray, np.ndarray]:
    model = build_model(hp)
    bn = next(
        layer for layer in model.get_layer("mobilenetv2_backbone").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    before = np.array(bn.moving_mean)
    set_trainable(model, 0, freeze_batchnorm=hp.freeze_batchnorm)  # as fine-tuning does
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.integers(0, 256, (8, 32, 32, 3)).astype("float32"),
              rng.integers(0, 2, (8, 1)).astype("float32"), epochs=1, verbose=0)
    return before, np.array(bn.moving_mean)


@pytest.mark.parametrize("freeze", [False, True])
def test_adapt_can_keep_the_parents_batchnorm_statistics(freeze: bool) -> None:
    # Given an adaptation run's hyperparameters (weights come from the parent later)
    hp = adapt_hparams(HParams(**TINY), AdaptOptions(freeze_batchnorm=freeze), {})
    assert hp.freeze_batchnorm is freeze and hp.weights == "none"
    # When the model takes a training step
    before, after = _moving_means_after_a_step(hp)
    # Then BatchNorm's statistics move only when it is not frozen
    assert np.array_equal(before, after) is freeze
