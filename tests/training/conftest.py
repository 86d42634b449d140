"""Fixtures for training tests: generated datasets in every supported layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top_imagenet.weights.h5"

requires_shared = pytest.mark.skipif(
    not (SHARED_DATA / "MANIFEST.csv").is_file(),
    reason=f"../shared/data is absent ({SHARED_DATA}); it ships with the project's CI, not with a clone",
)


def synthetic_face(rng: np.random.Generator, fake: bool, size: int = 32) -> Image.Image:
    """A smooth random image; fakes carry a periodic high-frequency grid, the kind of
    upsampling trace a generator leaves, which a small CNN must learn to see."""
    coarse = rng.uniform(40, 215, size=(6, 6, 3)).astype(np.uint8)
    img = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float64
    )
    if fake:
        yy, xx = np.mgrid[0:size, 0:size]
        grid = ((xx % 4 < 2) ^ (yy % 4 < 2)).astype(np.float64) * 2 - 1
        img += 50 * grid[..., None]
    img += rng.normal(0, 3, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_images(
    folder: Path, n: int, fake: bool, rng: np.random.Generator, prefix: str = ""
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:04d}.png"
        synthetic_face(rng, fake).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/{real,fake}/ with 200 images per class."""
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(7)
    write_images(root / "real", 200, False, rng)
    write_images(root / "fake", 200, True, rng)
    return root
