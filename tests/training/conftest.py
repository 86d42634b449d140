"""Fixtures for training tests: generated datasets in every supported layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sample_images import write_images

from deepscreen.litert import make_interpreter

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet.weights.h5"


def tflite_scores(model_content: bytes, pixels: np.ndarray) -> np.ndarray:
    """The first output of a one-output TFLite model for each image, one at a time."""
    interpreter = make_interpreter(model_content, num_threads=None)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scores = []
    for image in pixels:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        scores.append(interpreter.get_tensor(out["index"])[0, 0])
    return np.array(scores)


requires_shared = pytest.mark.skipif(
    not (SHARED_DATA / "MANIFEST.csv").is_file(),
    reason=f"../shared/data is absent ({SHARED_DATA}); it ships with the project's CI, not with a clone",
)


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/{real,fake}/ with 200 images per class."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(7)
    write_images(root / "real", 200, False, rng)
    write_images(root / "fake", 200, True, rng)
    return root
