"""The serving class reads quantization from the model: fully int8 models score like Keras.

The default model has float32 input and output; this builds a tiny integer-only
model to exercise the quantize/dequantize path. It needs TensorFlow, so it is
skipped where only the worker extras are installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deepscreen.imaging import Preprocessing
from deepscreen.inference import CARD_FILE, MODEL_FILE, Classifier

SIDE = 32


@pytest.fixture(scope="module")
def tiny_keras_model():
    tf = pytest.importorskip("tensorflow", reason="building a quantized model needs TensorFlow")
    keras = tf.keras
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    return tf, keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(20, SIDE, SIDE, 3), dtype=np.uint8)


def export_int8(tf, model, pixels: np.ndarray, io_type: str, target: Path) -> Path:
    """Integer-only TFLite with ``io_type`` input and output, plus a minimal card."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = pixels.astype(np.float32)
    converter.representative_dataset = lambda: ([samples[i : i + 1]] for i in range(len(samples)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = getattr(tf, io_type)
    converter.inference_output_type = getattr(tf, io_type)
    target.mkdir()
    (target / MODEL_FILE).write_bytes(converter.convert())
    card = {
        "schema": 1,
        "labels": ["real", "fake"],
        "output": "sigmoid",
        "input": {"height": SIDE, "width": SIDE, "channels": 3},
        "preprocessing": Preprocessing(height=SIDE, width=SIDE).to_card(),
        "threshold": 0.5,
    }
    (target / CARD_FILE).write_text(json.dumps(card))
    return target


@pytest.mark.parametrize("io_type", ["uint8", "int8"])
def test_quantized_model_scores_like_keras(tiny_keras_model, pixels, tmp_path, io_type):
    tf, model = tiny_keras_model
    model_dir = export_int8(tf, model, pixels, io_type, tmp_path / io_type)

    clf = Classifier(model_dir, num_threads=1, max_batch=8)

    assert clf.input_dtype == np.dtype(io_type)
    expected = model.predict(pixels.astype(np.float32), verbose=0).reshape(-1)
    scores = clf.predict_pixels(pixels)
    assert scores.dtype == np.float32
    # One output quantization step is 1/256; allow two for accumulated rounding.
    np.testing.assert_allclose(scores, expected, atol=2 / 256)
