"""The one serving class: decode, resize and classify images with a LiteRT model.

A model directory holds ``model.tflite`` and its ``model_card.json``. Everything
serving needs to know (labels, decision threshold, preprocessing, input size)
comes from the card and the model itself, never from literals here, so training
and serving cannot drift apart. This module never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepscreen.errors import ImageError, ModelError
from deepscreen.faces import FaceBox, FaceDetector, FaceStage, face_inputs, open_for_faces
from deepscreen.imaging import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    Preprocessing,
    decode_image,
)
from deepscreen.litert import make_interpreter

logger = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
CARD_FILE = "model_card.json"


def default_model_dir() -> Path:
    """The model shipped inside the package: ``deepscreen/models/default``."""
    return Path(__file__).resolve().parent / "models" / "default"


#: The label of an image in which the face stage found no face: neither real nor fake.
NO_FACE = "no_face"


@dataclass(frozen=True)
class FaceScore:
    """One detected face and, when it was classified, its score."""

    box: FaceBox
    #: P(fake) of this face's crop; None for faces beyond the card's ``max_faces``.
    score: float | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = self.box.to_json()
        out["score"] = None if self.score is None else round(float(self.score), 6)
        return out


@dataclass(frozen=True)
class Prediction:
    """The verdict on one image."""

    #: Probability of ``labels[1]`` (fake), in [0, 1]: with a face stage, the highest
    #: face score. None when the label is `NO_FACE`.
    score: float | None
    #: ``labels[0]``, ``labels[1]`` or `NO_FACE`.
    label: str
    #: sha256 of the model file that produced the score.
    model_version: str
    threshold: float
    #: Every face found (empty for a model without a face stage).
    faces: tuple[FaceScore, ...] = ()
    #: Why the image got no verdict (`NO_FACE`), else None.
    reason: str | None = None


@dataclass(frozen=True)
class PreparedImage:
    """An image made ready for the model: its inputs and what the face stage found."""

    #: (k, H, W, 3) uint8 model inputs: one per classified face, or the whole image
    #: (k = 1) for a model without a face stage; k = 0 means no face.
    inputs: np.ndarray
    faces: tuple[FaceBox, ...]
    width: int  # original size, after EXIF orientation
    height: int
    format: str


class Classifier:
    """Real-vs-fake classifier over a LiteRT (TFLite) model and its card.

    The model is loaded once, at construction. The underlying interpreter is
    **not thread-safe**: use one Classifier per thread or process (the
    ``num_threads`` argument parallelises inside one inference instead).
    """

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        num_threads: int | None = None,
        max_batch: int = 16,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        """Load ``model.tflite`` and ``model_card.json`` from ``model_dir``.

        ``num_threads`` None leaves it to LiteRT (a single thread in ai-edge-litert 2.x).
        Raises ModelError when the directory is missing, incomplete or inconsistent
        with itself.
        """
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.num_threads = num_threads

        model_bytes = _read_model(self.model_dir / MODEL_FILE)
        self.version = hashlib.sha256(model_bytes).hexdigest()
        self.card = _read_card(self.model_dir / CARD_FILE)
        card_version = self.card.get("version")
        if card_version is not None and card_version != self.version:
            raise ModelError(
                f"{self.model_dir}: card version {card_version!r} is not the sha256 "
                f"of {MODEL_FILE} ({self.version})"
            )
        self.labels, self.threshold, self.preprocessing = _parse_card(self.card, self.model_dir)
        self.face_stage = _parse_face_stage(self.card, self.model_dir)
        # One detector per thread: a LiteRT interpreter is not thread-safe, and workers
        # prepare a batch's images in several fetch threads at once.
        self._detectors = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._interpreter = _make_interpreter(model_bytes, num_threads, self.model_dir)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = int(self._input["shape"][0])
        self._check_shapes()
        logger.info(
            "loaded model %s version %s input %s %s threads %s",
            self.card.get("name", self.model_dir.name),
            self.version[:12],
            tuple(int(d) for d in self._input["shape"][1:]),
            self.input_dtype.name,
            num_threads,
        )

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes."""
        return int(self._input["shape"][1]), int(self._input["shape"][2])

    @property
    def input_dtype(self) -> np.dtype:
        """The model's input dtype: float32, or uint8/int8 for quantized models."""
        return np.dtype(self._input["dtype"])

    def label_for(self, score: float) -> str:
        """``labels[1]`` when ``score`` reaches the card's threshold, else ``labels[0]``."""
        return self.labels[1] if score >= self.threshold else self.labels[0]

    def decode(self, data: bytes) -> DecodedImage:
        """Decode and resize ``data`` exactly as training did. Raises ImageError subclasses."""
        return decode_image(
            data, self.preprocessing, max_bytes=self.max_bytes, max_pixels=self.max_pixels
        )

    @property
    def detector(self) -> FaceDetector:
        """This thread's face detector for the card's face stage (loaded on first use).
        `prepare` is therefore safe to call from several threads at once."""
        if self.face_stage is None:
            raise ModelError(f"{self.model_dir}: the model has no face stage")
        detector = getattr(self._detectors, "detector", None)
        if detector is None:
            detector = FaceDetector(self.face_stage, num_threads=1)
            self._detectors.detector = detector
        return detector

    def prepare(self, data: bytes) -> PreparedImage:
        """Decode ``data`` and cut the model's inputs exactly as training did.

        With a face stage: one crop per face (at most the card's ``max_faces``);
        without: the whole image resized. Raises ImageError subclasses for bad input.
        """
        if self.face_stage is None:
            decoded = self.decode(data)
            return PreparedImage(
                decoded.pixels[np.newaxis], (), decoded.width, decoded.height, decoded.format
            )
        opened = open_for_faces(
            data,
            self.face_stage,
            self.preprocessing,
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
        )
        inputs, faces = face_inputs(opened.image, self.detector, self.input_size[0])
        return PreparedImage(inputs, faces, opened.width, opened.height, opened.format)

    def predict_prepared(self, items: Sequence[PreparedImage]) -> list[Prediction]:
        """Predictions for prepared images, their inputs scored in shared batches."""
        counts = [len(item.inputs) for item in items]
        if sum(counts):
            scores = self.predict_pixels(
                np.concatenate([item.inputs for item in items if len(item.inputs)])
            )
        else:
            scores = np.zeros(0, np.float32)
        out, start = [], 0
        for item, n in zip(items, counts, strict=True):
            out.append(self.prediction_for(item, scores[start : start + n]))
            start += n
        return out

    def prediction_for(self, item: PreparedImage, scores: np.ndarray) -> Prediction:
        """The verdict on ``item`` from its inputs' scores (the highest face score wins)."""
        if self.face_stage is None:
            return self._prediction(float(scores[0]))
        faces = tuple(
            FaceScore(face, float(scores[i]) if i < len(scores) else None)
            for i, face in enumerate(item.faces)
        )
        if not len(scores):
            return Prediction(
                score=None,
                label=NO_FACE,
                model_version=self.version,
                threshold=self.threshold,
                faces=faces,
                reason=f"no face of at least {self.face_stage.min_face_px} px found",
            )
        best = float(np.max(scores))
        return Prediction(
            score=best,
            label=self.label_for(best),
            model_version=self.version,
            threshold=self.threshold,
            faces=faces,
        )

    def predict_pixels(self, batch: np.ndarray) -> np.ndarray:
        """Scores for an (N, H, W, 3) uint8 batch, as N floats in [0, 1]."""
        batch = np.asarray(batch)
        height, width = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (height, width, 3):
            raise ValueError(f"expected a (N, {height}, {width}, 3) batch, got {batch.shape}")
        scores = np.empty(len(batch), dtype=np.float32)
        for start in range(0, len(batch), self.max_batch):
            chunk = batch[start : start + self.max_batch]
            scores[start : start + len(chunk)] = self._invoke(chunk)
        return scores

    def classify_one(self, data: bytes) -> Prediction:
        """Classify one encoded image. Raises ImageError subclasses for bad input."""
        return self.predict_prepared([self.prepare(data)])[0]

    def classify(self, items: Sequence[bytes]) -> list[Prediction | ImageError]:
        """Classify encoded images; a bad one yields its ImageError in its place.

        Images are inferred ``max_batch`` at a time. With ``num_threads`` > 1 they are
        prepared (decoded, faces found and cut) in that many threads, the next batch's
        while this one is inferred, so the face stage does not hold the classifier up.
        Decoded pixels for at most two batches are held however many items are passed.
        """
        chunks = [items[i : i + self.max_batch] for i in range(0, len(items), self.max_batch)]
        if (self.num_threads or 1) <= 1 or len(items) <= 1:
            return [
                result
                for chunk in chunks
                for result in self._classify_prepared([self._prepare_or_error(d) for d in chunk])
            ]
        pool = self._prepare_pool()
        results: list[Prediction | ImageError] = []
        ahead = [pool.submit(self._prepare_or_error, data) for data in chunks[0]]
        for index in range(len(chunks)):
            current = ahead
            if index + 1 < len(chunks):
                ahead = [pool.submit(self._prepare_or_error, d) for d in chunks[index + 1]]
            results.extend(self._classify_prepared([f.result() for f in current]))
        return results

    def _prepare_pool(self) -> ThreadPoolExecutor:
        """The ``num_threads`` threads that prepare images for `classify`, started once:
        each keeps its own face detector loaded."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="prepare")
            return self._pool

    def _prepare_or_error(self, data: bytes) -> PreparedImage | ImageError:
        try:
            return self.prepare(data)
        except ImageError as exc:
            return exc

    def _classify_prepared(
        self, prepared: list[PreparedImage | ImageError]
    ) -> list[Prediction | ImageError]:
        """Predictions in place of the prepared images; errors stay where they are."""
        ok = [item for item in prepared if isinstance(item, PreparedImage)]
        predictions = iter(self.predict_prepared(ok))
        return [item if isinstance(item, ImageError) else next(predictions) for item in prepared]

    def _prediction(self, score: float) -> Prediction:
        return Prediction(
            score=score,
            label=self.label_for(score),
            model_version=self.version,
            threshold=self.threshold,
        )

    def _invoke(self, chunk: np.ndarray) -> np.ndarray:
        """Run one batch of at most ``max_batch`` images through the interpreter."""
        n = len(chunk)
        if n != self._batch:
            # Reallocation is costly: done only when the batch size changes.
            shape = [n, *(int(d) for d in self._input["shape"][1:])]
            try:
                self._interpreter.resize_tensor_input(self._input["index"], shape)
                self._interpreter.allocate_tensors()
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"cannot resize the model input to {shape}: {exc}") from exc
            self._batch = n
        try:
            self._interpreter.set_tensor(self._input["index"], self._quantize(chunk))
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output["index"])
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"inference failed: {exc}") from exc
        return self._dequantize(raw).reshape(n)

    def _quantize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (0..255) to the model's input dtype and quantization."""
        dtype = self.input_dtype
        scale, zero_point = self._input["quantization"]
        if dtype.kind == "f":
            return pixels.astype(dtype)
        if scale == 0:
            if dtype == np.uint8:
                return np.ascontiguousarray(pixels, dtype=np.uint8)
            raise ModelError(f"{dtype.name} input without quantization parameters")
        info = np.iinfo(dtype)
        q = np.rint(pixels.astype(np.float32) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        scale, zero_point = self._output["quantization"]
        if np.dtype(self._output["dtype"]).kind != "f" and scale != 0:
            return (raw.astype(np.float32) - zero_point) * scale
        return raw.astype(np.float32)

    def _check_shapes(self) -> None:
        """The model's tensors must agree with the card and with a sigmoid output."""
        shape = [int(d) for d in self._input["shape"]]
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"{self.model_dir}: model input shape {shape} is not (N, H, W, 3)")
        height, width = shape[1], shape[2]
        card_input = self.card.get("input")
        if card_input is not None:
            card_shape = (card_input.get("height"), card_input.get("width"))
            if card_shape != (height, width) or card_input.get("channels", 3) != 3:
                raise ModelError(
                    f"{self.model_dir}: card input {card_input} differs from the model's "
                    f"input shape {shape}"
                )
        if (self.preprocessing.height, self.preprocessing.width) != (height, width):
            raise ModelError(
                f"{self.model_dir}: card preprocessing size "
                f"{self.preprocessing.height}x{self.preprocessing.width} differs from the "
                f"model's input {height}x{width}"
            )
        out_shape = [int(d) for d in self._output["shape"]]
        if len(out_shape) != 2 or out_shape[1] != 1:
            raise ModelError(f"{self.model_dir}: model output shape {out_shape} is not (N, 1)")


def _read_model(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc}") from exc
    if not data:
        raise ModelError(f"model file {path} is empty")
    return data


def _read_card(path: Path) -> dict[str, Any]:
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read model card {path}: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"model card {path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise ModelError(f"model card {path} is not a JSON object")
    return card


def _parse_card(card: dict[str, Any], model_dir: Path) -> tuple[list[str], float, Preprocessing]:
    """Labels, threshold and preprocessing from a card; ModelError if malformed."""
    labels = card.get("labels")
    if (
        not isinstance(labels, list)
        or len(labels) != 2
        or not all(isinstance(label, str) for label in labels)
    ):
        raise ModelError(f"{model_dir}: card labels must be two strings, got {labels!r}")
    output = card.get("output", "sigmoid")
    if output != "sigmoid":
        raise ModelError(f"{model_dir}: card output {output!r} is not 'sigmoid'")
    threshold = card.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ModelError(f"{model_dir}: card threshold must be a number, got {threshold!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ModelError(f"{model_dir}: card threshold {threshold} is outside [0, 1]")
    prep_card = card.get("preprocessing")
    if not isinstance(prep_card, dict):
        raise ModelError(f"{model_dir}: card has no preprocessing section")
    try:
        prep = Preprocessing.from_card(prep_card)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{model_dir}: bad preprocessing in card: {exc}") from exc
    if prep.color != "RGB" or prep.dtype != "uint8":
        raise ModelError(
            f"{model_dir}: serving feeds RGB uint8 pixels, card asks for {prep.color} {prep.dtype}"
        )
    return list(labels), float(threshold), prep


def _parse_face_stage(card: dict[str, Any], model_dir: Path) -> FaceStage | None:
    """The card's face stage, or None for a model that classifies whole images."""
    raw = card.get("face_stage")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ModelError(f"{model_dir}: card face_stage must be an object")
    try:
        return FaceStage.from_card(raw)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{model_dir}: bad face_stage in card: {exc}") from exc


def _make_interpreter(model_bytes: bytes, num_threads: int | None, model_dir: Path) -> Any:
    """A LiteRT interpreter with tensors allocated; LiteRT errors become ModelError."""
    try:
        interpreter = make_interpreter(model_bytes, num_threads)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"{model_dir}: LiteRT cannot load {MODEL_FILE}: {exc}") from exc
    if len(interpreter.get_input_details()) != 1 or len(interpreter.get_output_details()) != 1:
        raise ModelError(f"{model_dir}: model must have exactly one input and one output")
    return interpreter
