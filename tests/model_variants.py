"""Other valid models than the packaged one, without TensorFlow: the default model with
zero bytes appended to its ``.tflite`` (LiteRT ignores them, the sha256 changes) and a
card of its own, with or without a face stage."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from deepscreen.faces import FaceStage
from deepscreen.inference import default_model_dir

#: Files of the packaged model a variant copies (the plots are left out: not needed).
COPIED = ("model_card.json", "report.md")


def whole_image_model(folder: Path) -> Path:
    """The packaged model in ``folder`` with the face stage taken out of its card: the
    same ``.tflite`` (and version), classifying whole images resized to its input.

    Generated test images have no faces, so tests of decoding, batching and the
    pipeline's mechanics use this; the face stage has tests of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.tflite", *COPIED):
        shutil.copy(default_model_dir() / name, folder / name)
    card = json.loads((folder / "model_card.json").read_text())
    card.pop("face_stage", None)
    (folder / "model_card.json").write_text(json.dumps(card, indent=2))
    return folder


def model_variant(
    folder: Path, *, pad: int = 16, threshold: float = 0.5, face_stage: FaceStage | None = None
) -> Path:
    """The default model in ``folder`` with ``pad`` bytes appended and ``threshold``;
    with ``face_stage`` in its card it classifies face crops (``no_face`` without one),
    without, whole images."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copy(default_model_dir() / name, folder / name)
    data = (default_model_dir() / "model.tflite").read_bytes() + b"\0" * pad
    (folder / "model.tflite").write_bytes(data)
    card = json.loads((folder / "model_card.json").read_text())
    card.update(
        version=hashlib.sha256(data).hexdigest(),
        name=f"{card.get('name', 'model')}-variant-{pad}",
        threshold=threshold,
    )
    # Whole images unless asked otherwise, whatever the packaged card says.
    card.pop("face_stage", None)
    if face_stage is not None:
        card["face_stage"] = face_stage.to_card()
    (folder / "model_card.json").write_text(json.dumps(card, indent=2))
    return folder
