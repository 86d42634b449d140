"""Images for the pipeline tests: generated ones, corrupt files, and real faces from
``../shared/data`` when it is there (a clone without it falls back to generated ones)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def image_bytes(seed: int, fmt: str = "JPEG") -> bytes:
    """A small smooth random image of (60 + seed % 7) x (40 + seed % 5) pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((60 + seed % 7, 40 + seed % 5))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


#: Three files named like images that no decoder accepts: not an image at all, a PNG
#: cut off after its signature, and a real JPEG cut off halfway through its data.
CORRUPT_FILES = {
    "corrupt.jpg": b"this is not a jpeg",
    "truncated.png": b"\x89PNG\r\n\x1a\n\0\0",
    "halfway.jpg": image_bytes(99)[: len(image_bytes(99)) // 2],
}


def generated_images(count: int) -> dict[str, bytes]:
    """``count`` JPEGs and PNGs by file name: ``img000.png``, ``img001.jpg``, ..."""
    return {
        f"img{i:03d}.{'jpg' if i % 2 else 'png'}": image_bytes(i, "JPEG" if i % 2 else "PNG")
        for i in range(count)
    }


def shared_images(count: int) -> dict[str, bytes] | None:
    """``count`` real and fake faces from ``../shared/data``, both sources and labels
    taken in turn, by a flat file name that keeps source and label; None when absent."""
    manifest = SHARED_DATA / "MANIFEST.csv"
    if not manifest.is_file():
        return None
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        groups.setdefault((row["source"], row["label"]), []).append(row)
    picked: list[dict[str, str]] = []
    turns = [iter(groups[key]) for key in sorted(groups)]
    while len(picked) < count:
        picked.extend(row for row in (next(t, None) for t in turns) if row is not None)
    return {
        f"{row['source']}-{row['label']}-{Path(row['path']).name}": (
            SHARED_DATA / row["path"]
        ).read_bytes()
        for row in picked[:count]
    }


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


def glow_fake(rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A new kind of fake for the adaptation tests: a plain `synthetic_face` with a soft
    pink glow somewhere. Smooth, so it has none of the grid's high frequencies that a
    model trained on the grid fakes looks for: such a model calls it real."""
    img = np.asarray(synthetic_face(rng, fake=False, size=size), np.float64)
    cy, cx = rng.uniform(size / 4, 3 * size / 4, size=2)
    yy, xx = np.mgrid[0:size, 0:size]
    sigma = 7.0 * size / 32
    glow = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))[..., None]
    img = img * (1 - glow) + np.array([230.0, 60.0, 230.0]) * glow
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


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def no_face_images() -> dict[str, bytes]:
    """Generated images without a face, by file name: noise, a flat colour, a gradient,
    one pixel, rendered text and a landscape drawn with Pillow (a face stage must find
    none)."""
    rng = np.random.default_rng(12)
    gradient = np.zeros((180, 240, 3), np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 240, dtype=np.uint8)[None, :]
    gradient[..., 2] = np.linspace(255, 0, 180, dtype=np.uint8)[:, None]
    landscape = Image.new("RGB", (320, 200), (135, 190, 235))
    draw = ImageDraw.Draw(landscape)
    draw.polygon([(0, 200), (90, 70), (180, 200)], fill=(90, 100, 110))
    draw.rectangle((0, 150, 320, 200), fill=(60, 140, 60))
    draw.ellipse((250, 20, 290, 60), fill=(250, 220, 80))
    buf = io.BytesIO()
    landscape.save(buf, "JPEG")
    text = Image.new("RGB", (400, 160), (255, 255, 255))
    draw = ImageDraw.Draw(text)
    font = ImageFont.load_default(size=40)
    draw.text((10, 20), "Hello, deepscreen", fill=(0, 0, 0), font=font)
    draw.text((10, 90), "0123456789 OK", fill=(20, 20, 120), font=font)
    return {
        "text.png": _png(np.asarray(text)),
        "noise.png": _png(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)),
        "flat.png": _png(np.full((160, 160, 3), (200, 40, 90), np.uint8)),
        "gradient.png": _png(gradient),
        "pixel.png": _png(np.zeros((1, 1, 3), np.uint8)),
        "landscape.jpg": buf.getvalue(),
    }
