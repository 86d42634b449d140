"""Folding BatchNorm and rounding to float16 in Keras, before a float16 export."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from training.export import convert
from training.fp16 import fold_and_round

from .conftest import tflite_scores


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """Conv -> BN -> depthwise -> BN -> dense, with BatchNorm statistics far from 0/1."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 2.0, n).astype("float32"),
                    rng.normal(0, 0.5, n).astype("float32"),
                    rng.normal(0, 1.0, n).astype("float32"),
                    rng.uniform(1e-4, 2.0, n).astype("float32"),
                ]
            )
    return model


def test_folding_keeps_the_outputs_and_every_weight_is_a_float16(model: keras.Model) -> None:
    x = np.random.default_rng(1).uniform(-1, 1, (32, 16, 16, 3)).astype("float32")
    folded = fold_and_round(model)
    before, after = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    assert np.max(np.abs(before - after)) < 5e-3  # only float16 rounding apart
    for layer in folded.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            # A pure shift: scale 1, mean 0, variance + epsilon = 1 (exact in float32)
            gamma, beta, mean, var = weights
            assert np.all(gamma == 1) and np.all(mean == 0)
            assert np.all(var + np.float32(layer.epsilon) == np.float32(1))
            weights = [beta]
        for w in weights:
            assert np.array_equal(w, w.astype(np.float16).astype(w.dtype)), layer.name
    # The original is untouched
    assert not np.array_equal(model.get_weights()[0], folded.get_weights()[0])


def test_a_float16_export_of_the_folded_model_matches_it_exactly(model: keras.Model) -> None:
    x = np.random.default_rng(2).uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
    folded = fold_and_round(model)
    tflite = tflite_scores(convert(folded, "float16"), x)
    assert np.max(np.abs(tflite - folded.predict(x, verbose=0)[:, 0])) < 1e-4
