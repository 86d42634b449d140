"""Dataset readers and splits, on generated trees of every layout."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sample_images import write_images

from deepscreen.imaging import Preprocessing
from training.data import (
    count_table,
    load_pixels,
    read_140k,
    read_ciplab,
    read_manifest,
    read_source,
    read_tree,
    split_samples,
)

from .conftest import SHARED_DATA, requires_shared


@pytest.fixture
def ciplab_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "real_and_fake_face"
    write_images(root / "training_real", 10, False, rng, "real_")
    for grade in ("easy", "mid", "hard"):
        write_images(root / "training_fake", 4, True, rng, f"{grade}_")
    return tmp_path


@pytest.fixture
def k140_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(2)
    base = tmp_path / "real_vs_fake" / "real-vs-fake"
    for split, n in (("train", 6), ("valid", 3), ("test", 2)):
        for label in ("real", "fake"):
            write_images(base / split / label, n, label == "fake", rng, f"{split}{label}")
    return tmp_path


def test_ciplab_reader_labels_and_difficulty(ciplab_root: Path) -> None:
    samples = read_ciplab(ciplab_root)
    assert Counter(s.label for s in samples) == {0: 10, 1: 12}
    assert Counter(s.difficulty for s in samples if s.label == 1) == {
        "easy": 4,
        "mid": 4,
        "hard": 4,
    }
    assert all(s.source == "ciplab" and s.split is None for s in samples)


def test_140k_reader_keeps_the_layouts_splits(k140_root: Path) -> None:
    samples = read_140k(k140_root)
    counts = Counter((s.split, s.label) for s in samples)
    assert counts == {
        ("train", 0): 6,
        ("train", 1): 6,
        ("valid", 0): 3,
        ("valid", 1): 3,
        ("test", 0): 2,
        ("test", 1): 2,
    }
    splits = split_samples(samples, 0.5, seed=1)
    assert len(splits["valid"]) == 6 and len(splits["test"]) == 4


def test_tree_and_manifest_readers(tmp_path: Path, synthetic_tree: Path) -> None:
    tree = read_tree(synthetic_tree)
    assert Counter(s.label for s in tree) == {0: 200, 1: 200}
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for s in tree[:5] + tree[-5:]:
            w.writerow(
                [str(s.path), "real" if s.label == 0 else "fake", "valid" if s.label else ""]
            )
    rows = read_manifest(manifest)
    assert [r.label for r in rows] == [0] * 5 + [1] * 5
    assert [r.split for r in rows] == [None] * 5 + ["valid"] * 5


def test_manifest_rejects_unknown_labels(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.jpg,maybe\n")
    with pytest.raises(ValueError, match="unknown label"):
        read_manifest(bad)


def test_read_source_detects_layouts_and_combines(ciplab_root: Path, k140_root: Path) -> None:
    # Given one folder that holds both Kaggle layouts (like ../shared/data)
    # When it is read without a kind
    samples = read_source(str(ciplab_root))
    # Then both sources come back
    assert {s.source for s in samples} == {"ciplab", "ffhq-stylegan"}
    assert len(read_source(f"ciplab:{ciplab_root}")) == 22
    with pytest.raises(FileNotFoundError):
        read_source(str(ciplab_root / "real_and_fake_face" / "training_real"))


def test_split_is_stratified_deterministic_and_stable(synthetic_tree: Path) -> None:
    samples = read_tree(synthetic_tree)
    a = split_samples(samples, 0.25, seed=3)
    b = split_samples(list(reversed(samples)), 0.25, seed=3)
    assert {s.path for s in a["valid"]} == {s.path for s in b["valid"]}
    assert Counter(s.label for s in a["valid"]) == {0: 50, 1: 50}
    # Adding files never moves an existing file across the split.
    more = split_samples(samples + read_tree(synthetic_tree, source="other"), 0.25, seed=3)
    assert {s.path for s in a["valid"]} <= {s.path for s in more["valid"]}
    assert {s.path for s in split_samples(samples, 0.25, seed=4)["valid"]} != {
        s.path for s in a["valid"]
    }
    assert "tree" in count_table(a) or synthetic_tree.name in count_table(a)


def test_load_pixels_drops_unreadable_files_with_reasons(
    synthetic_tree: Path, tmp_path: Path
) -> None:
    samples = read_tree(synthetic_tree)[:3]
    broken = tmp_path / "real" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    from training.data import Sample

    loaded = load_pixels(samples + [Sample(broken, 0, "x")], Preprocessing(height=32, width=32))
    assert loaded.pixels.shape == (3, 32, 32, 3) and loaded.pixels.dtype == np.uint8
    assert [p for p, _ in loaded.failed] == [broken]


@requires_shared
def test_shared_data_counts_match_its_readme() -> None:
    samples = read_source(str(SHARED_DATA))
    counts = Counter((s.source, s.split, s.label) for s in samples)
    assert counts[("ciplab", None, 0)] == 877 and counts[("ciplab", None, 1)] == 750
    assert (
        counts[("ffhq-stylegan", "train", 0)] == 1200
        and counts[("ffhq-stylegan", "train", 1)] == 1200
    )
    assert (
        counts[("ffhq-stylegan", "valid", 0)] == 300
        and counts[("ffhq-stylegan", "valid", 1)] == 300
    )
    grades = Counter(s.difficulty for s in samples if s.source == "ciplab" and s.label == 1)
    assert set(grades) == {"easy", "mid", "hard"} and sum(grades.values()) == 750


def test_a_collection_of_trees_is_read_source_by_source(tmp_path: Path) -> None:
    # Given a folder like ../shared/data-more: trees side by side, some with one label
    rng = np.random.default_rng(3)
    write_images(tmp_path / "both" / "real", 3, False, rng)
    write_images(tmp_path / "both" / "fake", 2, True, rng)
    write_images(tmp_path / "fakes_only" / "fake", 4, True, rng)
    write_images(tmp_path / "reals_only" / "real", 5, False, rng)
    # When it is read as one source
    samples = read_source(str(tmp_path))
    # Then each subfolder is a source with the labels it has
    counts = Counter((s.source, s.label) for s in samples)
    assert counts == {("both", 0): 3, ("both", 1): 2, ("fakes_only", 1): 4, ("reals_only", 0): 5}
    assert read_tree(tmp_path / "fakes_only")[0].source == "fakes_only"
    with pytest.raises(FileNotFoundError):
        read_tree(tmp_path)


def test_exclude_drops_a_source_or_only_its_fakes(tmp_path: Path) -> None:
    from training.train import exclude

    rng = np.random.default_rng(4)
    write_images(tmp_path / "a" / "real", 3, False, rng)
    write_images(tmp_path / "a" / "fake", 3, True, rng)
    write_images(tmp_path / "b" / "fake", 2, True, rng)
    samples = read_source(str(tmp_path))
    assert Counter((s.source, s.label) for s in exclude(samples, "a:fake, b")) == {("a", 0): 3}
    assert len(exclude(samples, "")) == len(samples)


def test_face_crops_are_cached_and_faceless_images_reported(tmp_path: Path) -> None:
    from deepscreen.faces import FaceStage
    from training.data import NO_FACE_REASON

    # Given generated images, which have no face
    rng = np.random.default_rng(5)
    write_images(tmp_path / "tree" / "real", 3, False, rng)
    samples = read_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    prep = Preprocessing(height=64, width=64)
    # When they are loaded through the face stage, twice
    first = load_pixels(samples, prep, face_stage=FaceStage(), cache_dir=cache)
    cached = sorted(cache.rglob("*.npy"))
    second = load_pixels(samples, prep, face_stage=FaceStage(), cache_dir=cache)
    # Then none is kept, each is reported as faceless, and the answer is cached
    for loaded in (first, second):
        assert len(loaded.samples) == 0
        assert [reason for _, reason in loaded.failed] == [NO_FACE_REASON] * 3
    assert len(cached) == 3 and sorted(cache.rglob("*.npy")) == cached
    # A different face stage is a different cache
    load_pixels(samples, prep, face_stage=FaceStage(margin=0.3), cache_dir=cache)
    assert len(list(cache.rglob("*.npy"))) == 6


@requires_shared
def test_face_crops_of_shared_images_match_the_serving_crops(tmp_path: Path) -> None:
    from deepscreen.faces import FaceDetector, FaceStage, face_inputs
    from deepscreen.imaging import open_rgb

    samples = read_source(str(SHARED_DATA))[::400]
    prep = Preprocessing(height=96, width=96)
    stage = FaceStage()
    loaded = load_pixels(samples, prep, face_stage=stage, cache_dir=tmp_path)
    again = load_pixels(samples, prep, face_stage=stage, cache_dir=tmp_path)
    assert len(loaded.samples) >= len(samples) - 1
    assert np.array_equal(loaded.pixels, again.pixels)
    detector = FaceDetector(stage)
    for i, (sample, pixels) in enumerate(zip(loaded.samples, loaded.pixels, strict=True)):
        opened = open_rgb(sample.path.read_bytes(), draft_side=stage.decode_side)
        crops, _ = face_inputs(opened.image, detector, 96)
        assert np.array_equal(crops[0], pixels), sample.path
        others = loaded.other_faces.get(i, np.zeros((0, 96, 96, 3), np.uint8))
        assert np.array_equal(crops[1:], others), sample.path


def _brightness(pixels: np.ndarray) -> np.ndarray:
    """A stand-in model: each crop's mean brightness in [0, 1]."""
    return pixels.reshape(len(pixels), -1).mean(axis=1) / 255


@requires_shared
def test_an_image_with_two_faces_keeps_both_and_scores_its_best(tmp_path: Path) -> None:
    from PIL import Image

    from deepscreen.faces import FaceStage

    # Given one image made of two shared face photos side by side, the left one larger
    photos = read_source(str(SHARED_DATA))
    faces = [s.path for s in photos if s.source == "ffhq-stylegan" and s.label == 0][:2]
    left = Image.open(faces[0]).convert("RGB").resize((256, 256))
    right = Image.open(faces[1]).convert("RGB").resize((160, 160))
    canvas = Image.new("RGB", (448, 256), (128, 128, 128))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (280, 48))
    (tmp_path / "tree" / "real").mkdir(parents=True)
    canvas.save(tmp_path / "tree" / "real" / "pair.png")
    # When it is loaded through the face stage
    loaded = load_pixels(
        read_tree(tmp_path / "tree"), Preprocessing(height=96, width=96),
        face_stage=FaceStage(), cache_dir=tmp_path / "cache",
    )
    # Then training gets the larger face, and the other is kept for scoring
    assert loaded.pixels.shape == (1, 96, 96, 3)
    assert list(loaded.other_faces) == [0] and loaded.other_faces[0].shape == (1, 96, 96, 3)
    # ... and the image scores as serving scores it: its best face's score
    best = loaded.best_face_scores(_brightness(loaded.pixels), _brightness)
    expected = max(_brightness(loaded.pixels)[0], _brightness(loaded.other_faces[0])[0])
    assert best.tolist() == [pytest.approx(expected)]


def test_best_face_scores_take_each_images_highest_face() -> None:
    from training.data import LoadedSplit

    crops = np.zeros((3, 4, 4, 3), np.uint8)
    extra = {1: np.full((2, 4, 4, 3), 200, np.uint8), 2: np.full((1, 4, 4, 3), 10, np.uint8)}
    split = LoadedSplit([], crops, np.zeros(3, np.int64), [], extra)
    out = split.best_face_scores(np.array([0.5, 0.1, 0.9]), _brightness)
    # Image 0 has one face; image 1's other faces score higher; image 2's lower.
    np.testing.assert_allclose(out, [0.5, 200 / 255, 0.9])
