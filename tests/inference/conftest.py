"""Fixtures for the serving tests: the default model, and images made in-process.

Every image is generated here with Pillow and numpy; none is read from disk, so
the tests run without ../shared and never depend on what the model has learnt,
only on the contracts around it.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_variants import whole_image_model
from PIL import Image

from deepscreen.imaging import Preprocessing
from deepscreen.inference import CARD_FILE, MODEL_FILE, Classifier, default_model_dir

Encode = Callable[..., bytes]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled default model as a whole-image classifier (its card without the face
    stage; same file, same version): these tests pin decoding and the card's contract
    on generated images, which have no faces. Its absence is a failure, not a skip."""
    path = default_model_dir()
    assert (path / MODEL_FILE).is_file(), f"no default model at {path}"
    assert (path / CARD_FILE).is_file(), f"no model card at {path}"
    return whole_image_model(tmp_path_factory.mktemp("whole") / "model")


@pytest.fixture(scope="session")
def card(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / CARD_FILE).read_text())


@pytest.fixture(scope="session")
def classifier(model_dir: Path) -> Classifier:
    # One thread: a model may be training on the same two cores.
    return Classifier(model_dir, num_threads=1)


@pytest.fixture(scope="session")
def prep(card: dict[str, Any]) -> Preprocessing:
    return Preprocessing.from_card(card["preprocessing"])


@pytest.fixture(scope="session")
def encode() -> Encode:
    """``encode(image, "PNG", **save_options) -> bytes``."""

    def _encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        return buf.getvalue()

    return _encode


def smooth_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random but smooth colours, so lossy codecs add little noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="session")
def smooth() -> Callable[..., Image.Image]:
    """``smooth(width, height, seed=0)``: see `smooth_rgb`."""
    return smooth_rgb


@pytest.fixture(scope="session")
def photo() -> Image.Image:
    """A landscape 320x200 RGB image."""
    return smooth_rgb(320, 200)


@pytest.fixture(scope="session")
def image_bytes(encode: Encode) -> list[bytes]:
    """A dozen different valid JPEGs and PNGs."""
    return [
        encode(smooth_rgb(96 + 16 * i, 80 + 8 * i, seed=i), "JPEG" if i % 2 else "PNG")
        for i in range(12)
    ]


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """``model_copy(**card_changes)``: a copy of the default model with its card edited.

    A change whose value is None deletes the key.
    """

    def _copy(**changes: Any) -> Path:
        target = tmp_path / "model"
        shutil.copytree(model_dir, target)
        card = json.loads((target / CARD_FILE).read_text())
        for key, value in changes.items():
            if value is None:
                card.pop(key, None)
            else:
                card[key] = value
        (target / CARD_FILE).write_text(json.dumps(card))
        return target

    return _copy
