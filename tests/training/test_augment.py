"""The training augmentation: what each probability switches on."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow", reason="the training extra is not installed")

from training.hparams import HParams
from training.model import make_augmenter

ONLY_CROP = {
    "image_size": 32,
    "flip": False,
    "rescale_probability": 0.0,
    "blur_probability": 0.0,
    "jpeg_probability": 0.0,
    "color_jitter": 0.0,
    "crop_min_scale": 0.5,
}


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_crop_probability_zero_keeps_the_face_stages_pixels() -> None:
    augment = make_augmenter(HParams(**ONLY_CROP, crop_probability=0.0))
    for img in _images(8):
        assert np.array_equal(augment(tf.constant(img)).numpy(), img)


def test_crop_probability_decides_how_many_images_are_cropped_and_resized() -> None:
    tf.random.set_seed(0)
    always = make_augmenter(HParams(**ONLY_CROP, crop_probability=1.0))
    some = make_augmenter(HParams(**ONLY_CROP, crop_probability=0.3))
    images = _images(200)
    assert all(not np.array_equal(always(tf.constant(i)).numpy(), i) for i in images[:8])
    changed = sum(not np.array_equal(some(tf.constant(i)).numpy(), i) for i in images)
    assert 30 <= changed <= 90  # about 60 of 200
