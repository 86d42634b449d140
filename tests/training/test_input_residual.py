"""``input_residual``: the backbone sees k times each pixel minus its 2x2 block's mean."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from training.export import convert
from training.fp16 import fold_and_round
from training.hparams import HParams
from training.model import build_model

from .conftest import tflite_scores

SIZE = 32


def _model(scale: float) -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_model(HParams(image_size=SIZE, alpha=0.35, input_residual=scale, weights="none"))


def _residual_of(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    probe = keras.Model(model.input, model.get_layer("residual_scaling").output)
    return probe.predict(pixels, verbose=0)


def _by_hand(pixels: np.ndarray, scale: float) -> np.ndarray:
    x = pixels / 127.5 - 1.0
    n, h, w, c = x.shape
    mean = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return scale * (x - mean.repeat(2, axis=1).repeat(2, axis=2))


def test_the_backbone_sees_the_scaled_local_residual() -> None:
    pixels = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    got = _residual_of(_model(8.0), pixels)
    np.testing.assert_allclose(got, _by_hand(pixels, 8.0), atol=1e-4)
    assert np.abs(got).max() > 1  # not the zeros of a broken layer


def test_an_image_upscaled_by_nearest_neighbour_leaves_no_residual() -> None:
    small = np.random.default_rng(1).uniform(0, 255, (1, SIZE // 2, SIZE // 2, 3))
    upscaled = small.repeat(2, axis=1).repeat(2, axis=2).astype("float32")
    assert np.abs(_residual_of(_model(8.0), upscaled)).max() < 1e-4


def test_off_by_default_and_the_model_then_has_no_residual_layers() -> None:
    assert HParams().input_residual == 0
    model = build_model(HParams(image_size=SIZE, alpha=0.35, weights="none"))
    assert not [layer for layer in model.layers if layer.name.startswith("residual")]


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="input_residual must be >= 0"):
        HParams(input_residual=-1)
    with pytest.raises(ValueError, match="even image_size"):
        HParams(input_residual=8, image_size=223)
    with pytest.raises(ValueError, match="input_residual_mix needs"):
        HParams(input_residual_mix=True)


def test_the_model_round_trips_through_a_keras_file_and_a_float16_tflite(tmp_path: Path) -> None:
    model = _model(8.0)
    pixels = np.random.default_rng(2).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    expected = model.predict(pixels, verbose=0)[:, 0]

    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")  # built-in layers only
    np.testing.assert_allclose(loaded.predict(pixels, verbose=0)[:, 0], expected, atol=1e-6)

    scores = tflite_scores(convert(fold_and_round(model), "float16"), pixels)
    np.testing.assert_allclose(scores, expected, atol=0.01)


def test_the_mixed_input_starts_as_the_pixels_alone_and_can_learn_the_residual() -> None:
    hp = HParams(
        image_size=SIZE, alpha=0.35, input_residual=8.0, input_residual_mix=True, weights="none"
    )
    model = build_model(hp)
    mix = model.get_layer("residual_mix")
    backbone_input = keras.Model(model.input, mix.output)
    pixels = np.random.default_rng(4).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(
        backbone_input.predict(pixels, verbose=0), pixels / 127.5 - 1, atol=1e-5
    )
    assert mix.trainable
    kernel = mix.get_weights()[0]
    kernel[0, 0, 3:, :] = np.eye(3)  # the residual counts too
    mix.set_weights([kernel])
    np.testing.assert_allclose(
        backbone_input.predict(pixels, verbose=0),
        pixels / 127.5 - 1 + _by_hand(pixels, 8.0),
        atol=1e-4,
    )
