"""The face stage: find faces with BlazeFace on LiteRT and cut the crops the classifier sees.

Serving, training and evaluation all go through `FaceStage` (the contract stored in a
model card under ``face_stage``) and `FaceDetector`, so a model never sees crops cut
differently from those it learnt on. The two BlazeFace models (MediaPipe, Apache-2.0)
ship inside this package (``deepscreen/models/face``); nothing is downloaded.

Detection runs on a copy shrunk to at most ``detect_side`` pixels: the short-range
model first, then, if it finds nothing, the same on a grey-padded copy (faces cut by
the frame edge), then the full-range model (small faces in wide shots). Every crop
is a square around the box, enlarged by ``margin``, cut from the decoded image and
resized to the model's input with one filter; with ``min_crop_side`` set to the input
side, a small face's square is cut at that side in native pixels and not resampled.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepscreen.errors import ModelError
from deepscreen.imaging import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    RESAMPLE,
    OpenedImage,
    Preprocessing,
    open_rgb,
)
from deepscreen.litert import make_interpreter

FACE_MODEL_DIR = Path(__file__).resolve().parent / "models" / "face"
SHORT_RANGE = "face_detection_short_range.tflite"
FULL_RANGE = "face_detection_full_range.tflite"
#: sha256 of the shipped detector files (checked at load).
DETECTOR_SHA256 = {
    SHORT_RANGE: "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    FULL_RANGE: "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
}

_RAW_SCORE_LIMIT = 80.0
_NMS_IOU = 0.3


@dataclass(frozen=True)
class FaceStage:
    """How faces are found and cropped; stored in the model card under ``face_stage``."""

    detector: str = "blazeface-short+padded+full"
    #: Detector confidence a face needs (MediaPipe's default).
    min_confidence: float = 0.5
    #: Faces whose box is smaller than this (longer side, in original pixels) are ignored;
    #: an image with none left is labelled ``no_face``.
    min_face_px: int = 32
    #: Least detail a face box must hold: the mean absolute Laplacian of its grey pixels
    #: resized to 64x64. BlazeFace takes some smooth colour blobs for faces (confidence
    #: up to 0.77); measured, those boxes score at most 1.74 and the faces of ../shared
    #: at least 5.45 (1,596 images), so 3.0 drops the one and keeps the other.
    min_detail: float = 3.0
    #: The square crop's side is the box's longer side times (1 + margin).
    margin: float = 0.6
    #: The square's side is at least this (original pixels). Set to the model's input
    #: side, a face whose enlarged box is smaller is cut as an input-sized square of
    #: native pixels with no resampling, so traces at pixel scale (a generator's
    #: upsampling) reach the model intact; larger faces are still downscaled. 0: off.
    min_crop_side: int = 0
    #: Faces classified per image, largest first (all are still recorded).
    max_faces: int = 4
    #: Detection runs on a copy whose longer side is at most this.
    detect_side: int = 512
    #: Fallback padding on each side, as a fraction of the longer side.
    pad_fraction: float = 0.25
    #: Decoding keeps at least this many pixels on the longer side (JPEG draft).
    decode_side: int = 1024
    #: Pillow filter for the one resize of each crop to the model input.
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if not 0.0 < self.min_confidence < 1.0:
            raise ValueError("min_confidence must be in (0, 1)")
        if self.min_face_px < 1 or self.max_faces < 1 or self.detect_side < 64:
            raise ValueError("min_face_px, max_faces and detect_side must be positive")
        if self.margin < 0 or self.pad_fraction < 0 or self.min_crop_side < 0:
            raise ValueError("margin, pad_fraction and min_crop_side must be >= 0")

    def to_card(self) -> dict[str, Any]:
        card = asdict(self)
        card["detector_sha256"] = dict(DETECTOR_SHA256)
        return card

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> FaceStage:
        return cls(**{k: v for k, v in card.items() if k in cls.__dataclass_fields__})

    def digest(self) -> str:
        """Short fingerprint of the contract: crop caches are keyed by it."""
        text = repr(sorted(asdict(self).items()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FaceBox:
    """A detected face, in original image pixels (after EXIF orientation)."""

    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float

    @property
    def side(self) -> float:
        return max(self.x1 - self.x0, self.y1 - self.y0)

    def to_json(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class _Spec:
    file: str
    size: int
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]


_SPECS = {
    "short": _Spec(SHORT_RANGE, 128, (8, 16), (2, 6)),
    "full": _Spec(FULL_RANGE, 192, (4,), (1,)),
}


def _anchors(spec: _Spec) -> np.ndarray:
    """SSD anchor centres (fixed size), normalised, in the model's output order."""
    centres = []
    for stride, per_cell in zip(spec.strides, spec.anchors_per_cell, strict=True):
        cells = spec.size // stride
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], axis=-1).reshape(-1, 2)
        centres.append(np.repeat(grid, per_cell, axis=0))
    return np.concatenate(centres).astype(np.float32)


class _BlazeFace:
    """One BlazeFace model on LiteRT: letterboxed input, decoded and suppressed boxes."""

    def __init__(self, spec: _Spec, num_threads: int | None) -> None:
        path = FACE_MODEL_DIR / spec.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"face detector {path} is missing: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != DETECTOR_SHA256[spec.file]:
            raise ModelError(f"face detector {path} does not match its sha256")
        self.spec = spec
        self.anchors = _anchors(spec)
        try:
            self._interpreter = make_interpreter(data, num_threads)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"LiteRT cannot load the face detector {path}: {exc}") from exc
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = sorted(
            self._interpreter.get_output_details(), key=lambda d: int(d["shape"][-1]), reverse=True
        )
        self._boxes, self._scores = outputs[0]["index"], outputs[1]["index"]

    def __call__(self, img: Image.Image, min_confidence: float) -> list[FaceBox]:
        """Faces in ``img`` (RGB), in its own pixel coordinates."""
        size = self.spec.size
        w, h = img.size
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (size, size))
        ox, oy = (size - nw) // 2, (size - nh) // 2
        canvas.paste(img.resize((nw, nh), Image.Resampling.BILINEAR), (ox, oy))
        tensor = np.asarray(canvas, dtype=np.float32)[np.newaxis] / 127.5 - 1.0
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._boxes)[0]
        logits = np.clip(self._interpreter.get_tensor(self._scores)[0, :, 0], -80, 80)
        scores = 1.0 / (1.0 + np.exp(-logits))
        keep = scores >= min_confidence
        if not keep.any():
            return []
        raw, scores, anchors = raw[keep], scores[keep], self.anchors[keep]
        cx = raw[:, 0] / size + anchors[:, 0]
        cy = raw[:, 1] / size + anchors[:, 1]
        bw, bh = raw[:, 2] / size, raw[:, 3] / size
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1) * size
        # Undo the letterbox: canvas pixels -> img pixels.
        boxes -= np.array([ox, oy, ox, oy], dtype=np.float32)
        boxes /= scale
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return _weighted_nms(boxes, scores)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix0 = np.maximum(box[0], others[:, 0])
    iy0 = np.maximum(box[1], others[:, 1])
    ix1 = np.minimum(box[2], others[:, 2])
    iy1 = np.minimum(box[3], others[:, 3])
    inter = (ix1 - ix0).clip(0) * (iy1 - iy0).clip(0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray) -> list[FaceBox]:
    """MediaPipe's weighted suppression: overlapping boxes are averaged by score."""
    order = np.argsort(-scores)
    boxes, scores = boxes[order], scores[order]
    alive = np.ones(len(boxes), dtype=bool)
    faces = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        group = alive & (_iou(boxes[i], boxes) > _NMS_IOU)
        group[i] = True
        weights = scores[group][:, None]
        x0, y0, x1, y1 = ((boxes[group] * weights).sum(axis=0) / weights.sum()).tolist()
        alive &= ~group
        faces.append(FaceBox(x0, y0, x1, y1, confidence=float(scores[i])))
    return faces


def _dedupe(faces: list[FaceBox]) -> list[FaceBox]:
    """Drop boxes that overlap a more confident one (the passes can find the same face)."""
    kept: list[FaceBox] = []
    for face in sorted(faces, key=lambda f: -f.confidence):
        box = np.array([face.x0, face.y0, face.x1, face.y1])
        if kept and (_iou(box, np.array([[k.x0, k.y0, k.x1, k.y1] for k in kept])) > _NMS_IOU).any():
            continue
        kept.append(face)
    return kept


class FaceDetector:
    """BlazeFace short range, a padded retry and a full-range fallback, per `FaceStage`.

    Loads both models once. Like the classifier, not thread-safe: one per thread.
    """

    def __init__(self, stage: FaceStage | None = None, *, num_threads: int | None = 1) -> None:
        self.stage = stage or FaceStage()
        self._num_threads = num_threads
        self._models: dict[str, _BlazeFace] = {}
        self._lock = threading.Lock()

    def _model(self, name: str) -> _BlazeFace:
        with self._lock:
            if name not in self._models:
                self._models[name] = _BlazeFace(_SPECS[name], self._num_threads)
            return self._models[name]

    def detect(self, img: Image.Image) -> list[FaceBox]:
        """Faces of at least ``min_face_px`` in ``img`` (RGB), largest first."""
        stage = self.stage
        w, h = img.size
        if min(w, h) < 2 or max(w, h) < stage.min_face_px:
            return []
        scale = min(1.0, stage.detect_side / max(w, h))
        small = img if scale == 1.0 else img.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
        )
        faces = self._model("short")(small, stage.min_confidence)
        if not faces:
            pad = round(max(small.size) * stage.pad_fraction)
            padded = Image.new("RGB", (small.width + 2 * pad, small.height + 2 * pad), (128,) * 3)
            padded.paste(small, (pad, pad))
            faces = [
                FaceBox(f.x0 - pad, f.y0 - pad, f.x1 - pad, f.y1 - pad, f.confidence)
                for f in self._model("short")(padded, stage.min_confidence)
            ]
        if not faces:
            faces = self._model("full")(small, stage.min_confidence)
        out = [
            FaceBox(
                max(0.0, f.x0 / scale),
                max(0.0, f.y0 / scale),
                min(float(w), f.x1 / scale),
                min(float(h), f.y1 / scale),
                f.confidence,
            )
            for f in _dedupe(faces)
        ]
        out = [
            f
            for f in out
            if f.side >= stage.min_face_px
            and f.x1 > f.x0
            and f.y1 > f.y0
            and face_detail(img, f) >= stage.min_detail
        ]
        return sorted(out, key=lambda f: -f.side)


def face_detail(img: Image.Image, face: FaceBox) -> float:
    """Mean absolute Laplacian of the face box's grey pixels at 64x64: eyes, brows and
    mouth give a face edges that a smooth blob does not have."""
    box = (int(face.x0), int(face.y0), max(int(face.x1), int(face.x0) + 1),
           max(int(face.y1), int(face.y0) + 1))
    grey = img.crop(box).convert("L").resize((64, 64), Image.Resampling.BILINEAR)
    a = np.asarray(grey, dtype=np.float32)
    lap = 4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]
    return float(np.abs(lap).mean())


def _slide(start: int, side: int, extent: int) -> int:
    """``start`` moved so [start, start + side) lies inside [0, extent) where it can;
    a square larger than the image stays centred on the face."""
    if side >= extent:
        return start
    return min(max(start, 0), extent - side)


def crop_square(img: Image.Image, face: FaceBox, stage: FaceStage, size: int) -> np.ndarray:
    """The square crop around ``face``, enlarged by the margin (and to at least
    ``stage.min_crop_side``), as (size, size, 3) uint8.

    Parts of the square outside the image are black. A square of any other side than
    ``size`` is resized with the stage's one filter; one of exactly ``size`` pixels is
    not resampled at all.
    """
    side = max(round(face.side * (1.0 + stage.margin)), stage.min_crop_side)
    x0 = round((face.x0 + face.x1 - side) / 2)
    y0 = round((face.y0 + face.y1 - side) / 2)
    # Slide the square inside the image where it fits, so fewer crops carry black bands
    # (how much of a photo surrounds the face is a property of its source, not of fakes).
    x0 = _slide(x0, side, img.width)
    y0 = _slide(y0, side, img.height)
    crop = img.crop((x0, y0, x0 + side, y0 + side))
    if crop.size != (size, size):
        crop = crop.resize((size, size), RESAMPLE[stage.resample], reducing_gap=None)
    return np.asarray(crop, dtype=np.uint8)


def open_for_faces(
    data: bytes,
    stage: FaceStage,
    prep: Preprocessing,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> OpenedImage:
    """Decode ``data`` as the face stage needs it: JPEG draft down to no less than
    ``stage.decode_side``, ``prep``'s background and orientation rules."""
    return open_rgb(
        data,
        draft_side=stage.decode_side if prep.jpeg_draft else None,
        background=prep.background,
        exif_transpose=prep.exif_transpose,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
    )


def face_inputs(
    img: Image.Image, detector: FaceDetector, size: int
) -> tuple[np.ndarray, tuple[FaceBox, ...]]:
    """Crops of the (at most ``max_faces``) largest faces, as (k, size, size, 3) uint8,
    and every face found; k is 0 when the image has no face."""
    faces = tuple(detector.detect(img))
    chosen = faces[: detector.stage.max_faces]
    if not chosen:
        return np.zeros((0, size, size, 3), np.uint8), faces
    return np.stack([crop_square(img, f, detector.stage, size) for f in chosen]), faces
