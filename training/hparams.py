"""The one frozen hyperparameter set for training, with documented defaults.

Defaults live here; `training/hparams.toml` restates them for people who tune,
and `load_hparams` reads any such file (flat keys, unknown keys refused).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_HPARAMS_FILE = Path(__file__).with_name("hparams.toml")


@dataclass(frozen=True)
class HParams:
    # --- model ---
    #: Square input side in pixels: each face crop is resized to it.
    image_size: int = 224
    #: Classify face crops (`deepscreen.faces.FaceStage`) rather than whole images. The
    #: stage's parameters go into the model card and serving uses the same ones.
    face_stage: bool = True
    #: The crop's side is the face box's longer side times (1 + face_margin).
    face_margin: float = 0.6
    #: Detector confidence, smallest face side (px) and least detail of the face stage
    #: (`deepscreen.faces.FaceStage`).
    face_min_confidence: float = 0.5
    face_min_px: int = 32
    face_min_detail: float = 3.0
    #: The face square's least side in original pixels (`FaceStage.min_crop_side`):
    #: image_size cuts small faces at native resolution, unresampled. 0: off (every
    #: crop resized, as the models before this field were trained).
    face_min_crop_side: int = 224
    #: MobileNetV2 width multiplier.
    alpha: float = 1.0
    #: 0: the backbone sees the pixels. k > 0: it sees k times each pixel minus the
    #: mean of its 2x2 block, a layer inside the model (a local residual after Tan et
    #: al.'s NPR, CVPR 2024): the traces up-sampling leaves between neighbouring pixels,
    #: without the image's content. Needs an even image_size.
    input_residual: float = 0.0
    #: With input_residual: give the backbone the pixels and the residual, mixed by a
    #: trained 1x1 convolution that starts as the pixels alone (the residual weighted 0),
    #: so training begins from the ImageNet features and adds the residual as it helps.
    input_residual_mix: bool = False
    #: "imagenet" (Keras download), "none", or a path to a backbone `.weights.h5`.
    weights: str = "imagenet"
    #: Keep BatchNorm in inference mode with its ImageNet statistics while fine-tuning.
    #: False lets it adapt to face images (with momentum 0.9): better for forensic cues.
    freeze_batchnorm: bool = False
    #: BatchNorm epsilon while it adapts (Keras' MobileNetV2 uses 1e-3). Larger values cap
    #: how much near-constant channels amplify float16 weight rounding.
    batchnorm_epsilon: float = 1e-3
    #: Dropout before the output layer.
    dropout: float = 0.3
    #: 0: the output is one sigmoid unit trained on real/fake. N > 0: train a softmax
    #: over "real" and up to N - 1 kinds of fake, each fake source its own class (the
    #: model learns what tells each kind apart instead of one boundary for all); the
    #: model's one output sums the fake classes (`fake_class_weights`). 8: real and up
    #: to seven kinds, the five of ../shared plus room for what adaptation adds.
    fake_classes: int = 8
    #: The fake sources in class order (classes 1, 2, ...), comma-separated: filled in
    #: by training from its data and kept by adaptation, which appends new ones.
    fake_class_names: str = ""
    #: How much each kind of fake counts in the model's one score, comma-separated
    #: ``name=weight`` (kinds not named count 1): the score is the sum of the fake
    #: classes' probabilities, each times its weight, inside the model. ciplab's
    #: composites are edited real photos, and its class takes most of the probability
    #: of ciplab's own real photos too, so at full weight the tail of those photos
    #: sets the threshold for every kind (README, "What the ciplab weight changed").
    #: Kinds the data has no class for are ignored; training itself never sees it.
    fake_class_weights: str = "ciplab=0.8"

    # --- optimisation ---
    batch_size: int = 32
    #: Phase 1: backbone frozen, head only.
    head_epochs: int = 1
    head_learning_rate: float = 1e-3
    #: Phase 2: fine-tune the backbone from `fine_tune_from` upward, low learning rate.
    fine_tune_epochs: int = 14
    fine_tune_learning_rate: float = 2e-4
    #: "constant", or "cosine": decay the phase-2 rate to zero over fine_tune_epochs.
    lr_schedule: str = "cosine"
    #: First backbone layer trained in phase 2: a layer name or an index.
    fine_tune_from: str = "block_4_expand"
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    #: Early stopping on validation ROC-AUC (phase 2), best weights restored.
    early_stopping_patience: int = 3
    #: Average the weights at the end of the last N phase-2 epochs (all of them when
    #: fewer): stochastic weight averaging over the cosine schedule's tail, kept in
    #: place of early stopping's best epoch. 0: keep early stopping's. When early
    #: stopping ends the phase inside the tail, the tail's epochs that ran are averaged
    #: (two at least).
    average_last_epochs: int = 0
    seed: int = 1337
    #: Bit-reproducible training: the same data, seed and machine give the same weights
    #: (TensorFlow's op determinism; measured at no cost in speed on the tests' tiny
    #: model). Once on, it stays on for the rest of the process: TensorFlow has no
    #: public switch back. Another CPU may still give other weights.
    deterministic: bool = False

    # --- data ---
    #: Share of each (source, label, difficulty) stratum held out when a layout has no split.
    val_fraction: float = 0.2
    #: Weight samples so both classes count equally.
    class_weighting: bool = True
    #: Weight samples so every source counts equally (a small hard source is not drowned).
    balance_sources: bool = True
    #: Sources left out of training and validation entirely (leave-one-generator-out runs),
    #: comma-separated; "source:fake" leaves out only that source's fakes.
    exclude_sources: str = ""

    # --- augmentation ---
    augment: bool = True
    flip: bool = True
    #: Random square crop of this share of the side (or more), resized back: small shifts
    #: and scale changes of the face crop, on both labels.
    crop_min_scale: float = 0.85
    #: Chance of that crop-and-resize (1.0: every image). Below 1, the other images keep
    #: the face stage's pixels as serving sees them (native with face_min_crop_side).
    crop_probability: float = 0.3
    #: Chance of a JPEG re-compression at a random quality in [min, max], on both labels:
    #: every source has its own JPEG history, which must not become the cue.
    jpeg_probability: float = 0.2
    jpeg_quality_min: int = 50
    jpeg_quality_max: int = 100
    #: Chance of a Gaussian blur with sigma uniform in (0, blur_sigma_max].
    blur_probability: float = 0.1
    blur_sigma_max: float = 1.0
    #: Chance of a downscale to a share in [rescale_min, 1) of the side, then back up:
    #: a face from a small photo and one from a large photo look alike after it.
    rescale_probability: float = 0.2
    rescale_min: float = 0.5
    #: Brightness, contrast and saturation jitter amplitude (0.1 = +-10 %).
    color_jitter: float = 0.1

    # --- evaluation, gate, export ---
    #: Operating threshold chosen on validation so real faces are flagged at most this often.
    target_fpr: float = 0.05
    #: "fpr" (threshold at target_fpr) or "half" (0.5) becomes the card's operating threshold.
    threshold_policy: str = "fpr"
    #: Training fails without exporting below this validation ROC-AUC.
    min_val_auc: float = 0.75
    #: "float16" (default) or "float32" TFLite weights.
    export_dtype: str = "float16"
    #: Largest |Keras - TFLite| score difference the export tolerates.
    parity_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.export_dtype not in ("float16", "float32"):
            raise ValueError(f"export_dtype must be float16 or float32, not {self.export_dtype!r}")
        if self.threshold_policy not in ("fpr", "half"):
            raise ValueError(f"threshold_policy must be fpr or half, not {self.threshold_policy!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, not {self.lr_schedule!r}")
        if self.average_last_epochs < 0:
            raise ValueError("average_last_epochs must be >= 0")
        if self.input_residual < 0:
            raise ValueError("input_residual must be >= 0")
        if self.input_residual and self.image_size % 2:
            raise ValueError("input_residual needs an even image_size")
        if self.input_residual_mix and not self.input_residual:
            raise ValueError("input_residual_mix needs input_residual > 0")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError("crop_min_scale must be in (0, 1]")
        if not 0 <= self.crop_probability <= 1:
            raise ValueError("crop_probability must be in [0, 1]")
        if self.fake_classes == 1 or self.fake_classes < 0:
            raise ValueError("fake_classes must be 0 (sigmoid) or at least 2")
        class_weights(self.fake_class_weights)  # a malformed entry fails here, not at export

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> HParams:
        """A copy with ``overrides`` applied, values coerced to the field types."""
        types = {f.name: f.type for f in fields(self)}
        unknown = set(overrides) - set(types)
        if unknown:
            raise ValueError(f"unknown hyperparameters: {', '.join(sorted(unknown))}")
        coerced = {k: coerce(types[k], v) for k, v in overrides.items()}
        return replace(self, **coerced)


def class_weights(spec: str) -> dict[str, float]:
    """``fake_class_weights`` ("ciplab=0.8,sdfd=1") as {kind: weight}; ValueError when
    an entry is not ``name=weight`` with a weight in [0, 1]."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or not 0 <= weight <= 1:
            raise ValueError(
                f"fake_class_weights: {item!r} is not name=weight with a weight in [0, 1]"
            )
        weights[name.strip()] = weight
    return weights


def coerce(type_name: Any, value: Any) -> Any:
    """``value`` (a string from the command line, or TOML's own type) as a field of type
    ``type_name`` (a dataclass field's type, a name under postponed annotations)."""
    name = type_name if isinstance(type_name, str) else type_name.__name__
    if not isinstance(value, str):
        return float(value) if name == "float" and isinstance(value, int) else value
    if name == "bool":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if name == "int":
        return int(value)
    if name == "float":
        return float(value)
    return value


def load_hparams(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> HParams:
    """HParams from a TOML file (default: training/hparams.toml) plus overrides."""
    values: dict[str, Any] = {}
    path = Path(path) if path else DEFAULT_HPARAMS_FILE
    if path.exists():
        with path.open("rb") as fh:
            values = tomllib.load(fh)
    elif path != DEFAULT_HPARAMS_FILE:
        raise FileNotFoundError(path)
    values.update(overrides or {})
    return HParams().with_overrides(values)
