"""The face stage: BlazeFace on LiteRT, the crops it cuts and the `no_face` label.

Non-faces are generated here; real faces come from ../shared (those tests skip
without it, with the reason).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from deepscreen.errors import ImageError, ModelError
from deepscreen.faces import FaceBox, FaceDetector, FaceStage, crop_square
from deepscreen.inference import NO_FACE, Classifier, Prediction

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
needs_shared = pytest.mark.skipif(
    not (SHARED / "data" / "MANIFEST.csv").is_file(),
    reason=f"../shared/data is absent ({SHARED}); it ships with the project's CI, not a clone",
)


def _landscape() -> Image.Image:
    """A landscape drawn with Pillow: sky gradient, sun, mountains, a lake and a tree."""
    img = Image.new("RGB", (480, 320))
    draw = ImageDraw.Draw(img)
    for y in range(320):
        draw.line([(0, y), (480, y)], fill=(90 + y // 4, 150 + y // 6, 235 - y // 5))
    draw.ellipse([360, 30, 420, 90], fill=(255, 230, 120))
    draw.polygon([(0, 230), (120, 90), (250, 230)], fill=(95, 105, 95))
    draw.polygon([(160, 230), (310, 70), (480, 230)], fill=(80, 90, 85))
    draw.rectangle([0, 230, 480, 320], fill=(40, 110, 160))
    draw.rectangle([60, 180, 72, 240], fill=(90, 60, 30))
    draw.ellipse([30, 120, 102, 200], fill=(40, 120, 40))
    return img


def _text() -> Image.Image:
    img = Image.new("RGB", (400, 200), "white")
    draw = ImageDraw.Draw(img)
    for row in range(6):
        draw.text(
            (10, 10 + 30 * row), "The quick brown fox jumps over the lazy dog 0123", fill="black"
        )
    return img


def non_faces() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    gradient = np.tile(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], (200, 1, 3))
    return {
        "noise": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
        "flat": Image.new("RGB", (256, 256), (180, 120, 90)),
        "gradient": Image.fromarray(gradient),
        "1x1": Image.new("RGB", (1, 1), (200, 150, 120)),
        "text": _text(),
        "landscape": _landscape(),
    }


@pytest.fixture
def face_model(model_copy: Callable[..., Path]) -> Classifier:
    """The packaged model with a face stage in its card (the default stage)."""
    return Classifier(model_copy(face_stage=FaceStage().to_card()), num_threads=1)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(non_faces()))
def test_generated_non_faces_get_no_face(face_model: Classifier, name: str) -> None:
    # Given an image with no face in it
    data = _png(non_faces()[name])
    # When the face-stage model classifies it
    prediction = face_model.classify_one(data)
    # Then it is neither real nor fake, and says why
    assert prediction.label == NO_FACE
    assert prediction.score is None
    assert prediction.faces == ()
    assert "no face" in (prediction.reason or "")


def test_a_model_without_a_face_stage_classifies_whole_images(classifier: Classifier) -> None:
    if classifier.face_stage is not None:
        pytest.skip("the packaged model has a face stage; covered by the face tests")
    prediction = classifier.classify_one(_png(non_faces()["noise"]))
    assert prediction.label in classifier.labels and prediction.score is not None


@pytest.mark.parametrize("bad", [{"min_confidence": 2.0}, {"margin": -1}, "yes"])
def test_bad_face_stage_in_card_is_refused(model_copy: Callable[..., Path], bad: object) -> None:
    with pytest.raises(ModelError, match="face_stage"):
        Classifier(model_copy(face_stage=bad))


def test_face_stage_round_trips_through_the_card() -> None:
    stage = FaceStage(margin=0.4, max_faces=2)
    card = stage.to_card()
    assert FaceStage.from_card(card) == stage
    assert set(card["detector_sha256"]) == {
        "face_detection_short_range.tflite",
        "face_detection_full_range.tflite",
    }
    assert stage.digest() != FaceStage().digest()


def test_crop_slides_inside_the_image_and_pads_only_when_larger() -> None:
    img = Image.fromarray(np.full((100, 200, 3), 200, np.uint8))
    stage = FaceStage(margin=0.5)
    # A 40 px face at the left edge: the 60 px square slides right, no black band.
    crop = crop_square(img, FaceBox(0, 30, 40, 70, 0.9), stage, 32)
    assert crop.shape == (32, 32, 3) and crop.min() == 200
    # A face as tall as the image: the square is larger, so it is padded with black.
    crop = crop_square(img, FaceBox(50, 0, 150, 100, 0.9), stage, 32)
    assert crop.min() == 0 and crop.max() == 200


def test_min_crop_side_cuts_small_faces_at_native_pixels() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    face = FaceBox(40, 40, 60, 60, 0.9)  # 20 px face: its 30 px square is below 64
    native = crop_square(img, face, FaceStage(margin=0.5, min_crop_side=64), 64)
    # The 64 px square centred on the face, pixel for pixel: nothing was resampled.
    assert np.array_equal(native, pixels[18:82, 18:82])
    resized = crop_square(img, face, FaceStage(margin=0.5), 64)
    assert not np.array_equal(resized, native)
    # A face whose square is larger than the floor is still downscaled to the input.
    big = crop_square(img, FaceBox(10, 10, 90, 90, 0.9), FaceStage(min_crop_side=64), 64)
    assert big.shape == (64, 64, 3)
    assert FaceStage(min_crop_side=64).digest() != FaceStage().digest()


def _shared_sample(per_folder: int) -> list[Path]:
    picks: dict[str, list[Path]] = {}
    for root in (SHARED / "data", SHARED / "data-more"):
        manifest = root / "MANIFEST.csv"
        if not manifest.is_file():
            continue
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh):
                path = root / row["path"]
                key = str(path.parent)
                if len(picks.setdefault(key, [])) < per_folder:
                    picks[key].append(path)
    return [p for paths in picks.values() for p in paths]


@needs_shared
def test_faces_are_found_in_shared_images(face_model: Classifier) -> None:
    # Given a few images from every folder of ../shared
    paths = _shared_sample(per_folder=6)
    assert len(paths) >= 30
    # When the face-stage model classifies them
    predictions = face_model.classify([p.read_bytes() for p in paths])
    # Then (nearly) every one has a face, inside the image, and the image's score is
    # its best face's score
    with_face = [p for p in predictions if not isinstance(p, Exception) and p.faces]
    assert len(with_face) >= len(paths) - 1, f"{len(with_face)} of {len(paths)} with a face"
    for path, prediction in zip(paths, predictions, strict=True):
        assert not isinstance(prediction, Exception), path
        if not prediction.faces:
            continue
        width, height = Image.open(path).size
        scores = [f.score for f in prediction.faces if f.score is not None]
        assert prediction.score == max(scores)
        assert prediction.label in face_model.labels
        for face in prediction.faces:
            assert 0 <= face.box.x0 < face.box.x1 <= width
            assert 0 <= face.box.y0 < face.box.y1 <= height
            assert face.box.confidence >= 0.5


@needs_shared
def test_the_detector_falls_back_for_faces_cut_by_the_frame() -> None:
    # A face cut in half by the right edge is still found (padded retry).
    path = _shared_sample(per_folder=1)[0]
    img = Image.open(path).convert("RGB")
    detector = FaceDetector()
    faces = detector.detect(img)
    assert faces, f"no face in {path}"
    f = faces[0]
    half = img.crop((0, 0, round((f.x0 + f.x1) / 2 + 4), img.height))
    assert detector.detect(half), "the half face was not found"


@needs_shared
def test_prepare_is_safe_from_several_threads(face_model: Classifier) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # Given images with faces, prepared one by one
    blobs = [p.read_bytes() for p in _shared_sample(per_folder=2)]
    expected = [face_model.prepare(b) for b in blobs]
    # When four threads prepare them at once, several times over
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(face_model.prepare, blobs * 3))
    # Then every thread cut exactly the same crops (one detector per thread)
    for want, have in zip(expected * 3, got, strict=True):
        assert want.faces == have.faces
        assert np.array_equal(want.inputs, have.inputs)


@needs_shared
def test_classify_in_threads_keeps_order_errors_and_scores(model_copy: Callable[..., Path]) -> None:
    # Given a two-thread face-stage classifier with small batches, and faces, a
    # non-face and corrupt bytes interleaved over several batches
    model = Classifier(model_copy(face_stage=FaceStage().to_card()), num_threads=2, max_batch=4)
    faces = [p.read_bytes() for p in _shared_sample(per_folder=1)]
    items = [*faces[:3], b"not an image", _png(non_faces()["noise"]), *faces[3:], b"\xff\xd8"]
    assert len(items) > 2 * model.max_batch
    # When it classifies them in one call (prepared in threads, a batch ahead)
    got = model.classify(items)
    # Then each result is what the image gets alone, in the same place
    assert len(got) == len(items)
    for data, result in zip(items, got, strict=True):
        try:
            want = model.classify_one(data)
        except ImageError as exc:
            assert isinstance(result, ImageError) and type(result) is type(exc)
            continue
        assert isinstance(result, Prediction)
        assert (result.label, result.faces) == (want.label, want.faces)
        if want.score is None:
            assert result.score is None
        else:
            assert result.score == pytest.approx(want.score, abs=1e-6)
