"""The Keras model and the augmentation pipeline.

The model takes RGB pixels as floats in 0..255 (what `deepscreen.imaging` produces)
and does its own scaling, so serving only decodes and resizes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.hparams import HParams, class_weights

log = logging.getLogger(__name__)

BACKBONE_NAME = "mobilenetv2_backbone"
FAMILY_LAYER = "fake_family"
SCORE_LAYER = "fake_probability"


def build_model(hp: HParams, weights: str | None = None) -> keras.Model:
    """MobileNetV2 backbone + dropout + one sigmoid unit giving P(fake) (with
    ``hp.fake_classes``, a softmax over real and each kind of fake instead, whose
    one score is the fake classes' probabilities summed with ``hp.fake_class_weights``).

    ``weights`` overrides ``hp.weights``: "imagenet" (Keras' download), "none",
    or a path to a backbone ``.weights.h5`` (offline use).
    """
    weights = hp.weights if weights is None else weights
    size = hp.image_size
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="mobilenet_scaling")(inputs)
    if hp.input_residual:
        residual = _local_residual(x, hp.input_residual)
        x = _mix(x, residual) if hp.input_residual_mix else residual
    backbone = keras.applications.MobileNetV2(
        input_shape=(size, size, 3),
        alpha=hp.alpha,
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        pooling="avg",
    )
    backbone.name = BACKBONE_NAME
    if weights not in ("imagenet", "none", "", None):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights not found: {path}")
        backbone.load_weights(path)
        log.info("loaded backbone weights from %s", path)
    # With freeze_batchnorm, BatchNorm stays in inference mode in both phases (Keras
    # transfer-learning guide; `set_trainable` keeps its layers frozen): small
    # fine-tuning batches cannot wreck the statistics of the pretrained weights,
    # ImageNet's or (adapt) the parent model's loaded later. Otherwise BatchNorm
    # learns; Keras' MobileNetV2 momentum (0.999) would need thousands of steps before
    # its moving statistics match the batches, so they follow the data faster.
    if hp.freeze_batchnorm:
        x = backbone(x, training=False)
    else:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
                layer.epsilon = hp.batchnorm_epsilon
        x = backbone(x)
    x = keras.layers.Dropout(hp.dropout, name="head_dropout")(x)
    if hp.fake_classes > 0:
        return _family_model(inputs, x, hp)
    outputs = keras.layers.Dense(1, activation="sigmoid", name=SCORE_LAYER, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="deepscreen_mobilenetv2")


def _local_residual(x, scale: float):
    """``scale`` times ``x`` minus the mean of each pixel's 2x2 block: built-in layers
    only, so the .keras file loads without custom objects and LiteRT runs it."""
    block_mean = keras.layers.UpSampling2D(2, interpolation="nearest", name="residual_up")(
        keras.layers.AveragePooling2D(2, name="residual_down")(x)
    )
    residual = keras.layers.Subtract(name="residual")([x, block_mean])
    return keras.layers.Rescaling(scale, name="residual_scaling")(residual)


def _mix(pixels, residual):
    """A 1x1 convolution of pixels and residual to three channels, the identity on the
    pixels and 0 on the residual at first."""
    kernel = np.zeros((1, 1, 6, 3), dtype="float32")
    kernel[0, 0, [0, 1, 2], [0, 1, 2]] = 1.0
    both = keras.layers.Concatenate(name="residual_and_pixels")([pixels, residual])
    return keras.layers.Conv2D(
        3,
        1,
        use_bias=False,
        kernel_initializer=keras.initializers.Constant(kernel),
        name="residual_mix",
    )(both)


def _family_model(inputs, features, hp: HParams) -> keras.Model:
    """A softmax over "real" (class 0) and ``hp.fake_classes - 1`` kinds of fake, and
    the model's one output: a fixed, untrained sum of the fake classes' probabilities,
    each times its `score_kernel` weight (all 1: P(fake) = 1 - P(real)), so serving,
    export and adaptation see a single score as with the sigmoid head. `family_head`
    gives the softmax to train."""
    probs = keras.layers.Dense(
        hp.fake_classes, activation="softmax", name=FAMILY_LAYER, dtype="float32"
    )(features)
    outputs = keras.layers.Dense(
        1,
        use_bias=False,
        trainable=False,
        kernel_initializer=keras.initializers.Constant(score_kernel(hp)),
        name=SCORE_LAYER,
        dtype="float32",
    )(probs)
    return keras.Model(inputs, outputs, name="deepscreen_mobilenetv2")


def score_kernel(hp: HParams) -> np.ndarray:
    """The (fake_classes, 1) weights of the score over the softmax: 0 for real, each
    named kind's ``hp.fake_class_weights`` entry, 1 for every other class."""
    kernel = np.ones((hp.fake_classes, 1), "float32")
    kernel[0] = 0.0
    weights = class_weights(hp.fake_class_weights)
    for i, name in enumerate(n for n in hp.fake_class_names.split(",") if n):
        kernel[i + 1] = weights.get(name, 1.0)
    return kernel


def set_score_weights(model: keras.Model, hp: HParams) -> None:
    """Give a model with fake classes the score weights of ``hp`` (after loading
    weights saved under another recipe, whose file carries its own)."""
    if hp.fake_classes:
        model.get_layer(SCORE_LAYER).set_weights([score_kernel(hp)])


def seed_new_classes(model: keras.Model, known: int, used: int) -> None:
    """Start the fake classes ``known + 1 .. used`` (kinds the loaded weights never saw,
    e.g. adaptation's corrections) from the mean of the known fake classes' weights.

    Training leaves an unused class far below every other (its logit is pushed down
    on every image), so a new kind would first have to climb out of that; from the
    known kinds' mean it starts as an average kind of fake and learns from there."""
    if not 0 < known < used:
        return
    layer = model.get_layer(FAMILY_LAYER)
    kernel, bias = layer.get_weights()
    kernel[:, known + 1 : used + 1] = kernel[:, 1 : known + 1].mean(axis=1, keepdims=True)
    bias[known + 1 : used + 1] = bias[1 : known + 1].mean()
    layer.set_weights([kernel, bias])


def family_head(model: keras.Model) -> keras.Model:
    """The softmax over real and each kind of fake of a model built with fake_classes."""
    return keras.Model(model.inputs, model.get_layer(FAMILY_LAYER).output)


def fitted_part(model: keras.Model, hp: HParams) -> keras.Model:
    """What training fits: the model itself, or (fake_classes) its softmax over the kinds."""
    return family_head(model) if hp.fake_classes else model


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_NAME)


def set_trainable(
    model: keras.Model, fine_tune_from: str | int | None, *, freeze_batchnorm: bool = False
) -> int:
    """Freeze the backbone below ``fine_tune_from`` (all of it when None), and every
    BatchNormalization layer with ``freeze_batchnorm``: Keras 3 does not keep the
    backbone call's ``training=False`` under fit, but a BatchNormalization layer that
    is not trainable always runs in inference mode.

    Returns the number of backbone layers left trainable.
    """
    backbone = backbone_of(model)
    if fine_tune_from is None:
        backbone.trainable = False
        return 0
    backbone.trainable = True
    start = _layer_index(backbone, fine_tune_from)
    for i, layer in enumerate(backbone.layers):
        frozen_bn = freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= start and not frozen_bn
    return len(backbone.layers) - start


def _layer_index(backbone: keras.Model, ref: str | int) -> int:
    if isinstance(ref, int) or str(ref).isdigit():
        return int(ref)
    for i, layer in enumerate(backbone.layers):
        if layer.name == ref:
            return i
    raise ValueError(f"no backbone layer named {ref!r}")


def make_dataset(
    pixels: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    hp: HParams,
    *,
    training: bool,
) -> tf.data.Dataset:
    """Batches of (float pixels, label[, weight]); shuffled and augmented when training."""
    parts: tuple = (pixels, labels.astype("float32"))
    if weights is not None:
        parts += (weights.astype("float32"),)
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if training:
        ds = ds.shuffle(len(pixels), seed=hp.seed, reshuffle_each_iteration=True)
        if hp.augment:
            augment = make_augmenter(hp)
            ds = ds.map(lambda x, *rest: (augment(x), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda x, *rest: (tf.cast(x, tf.float32), *rest))
    return ds.batch(hp.batch_size).prefetch(tf.data.AUTOTUNE)


def _gaussian_blur(img: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur of a float (H, W, 3) image, 7-tap kernel."""
    x = tf.range(-3.0, 4.0)
    k = tf.exp(-(x**2) / (2.0 * sigma**2))
    k = k / tf.reduce_sum(k)
    kx = tf.tile(tf.reshape(k, [1, 7, 1, 1]), [1, 1, 3, 1])
    ky = tf.tile(tf.reshape(k, [7, 1, 1, 1]), [1, 1, 3, 1])
    batch = img[tf.newaxis]
    batch = tf.nn.depthwise_conv2d(batch, kx, [1, 1, 1, 1], "SAME")
    batch = tf.nn.depthwise_conv2d(batch, ky, [1, 1, 1, 1], "SAME")
    return batch[0]


def _to_uint8(img: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)


def make_augmenter(hp: HParams):
    """Per-image augmentation on uint8 pixels, on both labels alike: flips, small crops
    and scale changes, down-then-up resampling, blur, colour jitter and JPEG
    re-compression over a wide quality range: the processing an image meets on its way
    to a bucket, which must not be what tells real from fake."""
    size = hp.image_size
    j = hp.color_jitter

    def maybe(probability: float, changed, img: tf.Tensor) -> tf.Tensor:
        return tf.cond(tf.random.uniform([]) < probability, lambda: changed(img), lambda: img)

    def rescale(img: tf.Tensor) -> tf.Tensor:
        side = tf.cast(tf.round(tf.random.uniform([], hp.rescale_min, 1.0) * size), tf.int32)
        small = tf.image.resize(img, tf.stack([side, side]), method="bilinear", antialias=True)
        return _to_uint8(tf.image.resize(small, [size, size], method="bilinear"))

    def crop(img: tf.Tensor) -> tf.Tensor:
        side = tf.cast(tf.round(tf.random.uniform([], hp.crop_min_scale, 1.0) * size), tf.int32)
        img = tf.image.random_crop(img, tf.stack([side, side, 3]))
        return _to_uint8(tf.image.resize(img, [size, size], method="bilinear", antialias=True))

    def blur(img: tf.Tensor) -> tf.Tensor:
        sigma = tf.random.uniform([], 0.1, hp.blur_sigma_max)
        return _to_uint8(_gaussian_blur(tf.cast(img, tf.float32), sigma))

    def augment(img: tf.Tensor) -> tf.Tensor:
        if hp.flip:
            img = tf.image.random_flip_left_right(img)
        if hp.crop_min_scale < 1.0 and hp.crop_probability > 0:
            img = maybe(hp.crop_probability, crop, img)
        if hp.rescale_probability > 0:
            img = maybe(hp.rescale_probability, rescale, img)
        if hp.blur_probability > 0:
            img = maybe(hp.blur_probability, blur, img)
        if j > 0:
            f = tf.cast(img, tf.float32) / 255.0
            f = tf.image.random_brightness(f, j)
            f = tf.image.random_contrast(f, 1 - j, 1 + j)
            f = tf.image.random_saturation(f, 1 - j, 1 + j)
            img = _to_uint8(f * 255.0)
        if hp.jpeg_probability > 0:
            quality = tf.random.uniform([], hp.jpeg_quality_min, hp.jpeg_quality_max + 1, tf.int32)
            img = maybe(
                hp.jpeg_probability, lambda x: tf.image.adjust_jpeg_quality(x, quality), img
            )
        return tf.ensure_shape(img, [size, size, 3])

    return augment
