"""Every kind of input the serving class meets, decoded and classified with the default model."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from deepscreen.errors import ImageError, OversizedImage, UndecodableImage, UnsupportedImage
from deepscreen.imaging import Preprocessing
from deepscreen.inference import Classifier, Prediction


def reference(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """What the model should see for an RGB image: a plain resize with the card's filter."""
    resample = Image.Resampling[prep.resample.upper()]
    return np.asarray(img.convert("RGB").resize(prep.size, resample), dtype=np.int16)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def assert_model_ready(pixels: np.ndarray, prep: Preprocessing) -> None:
    assert pixels.shape == (prep.height, prep.width, 3)
    assert pixels.dtype == np.uint8


def assert_prediction(pred: Prediction, classifier: Classifier) -> None:
    assert 0.0 <= pred.score <= 1.0
    assert pred.label == classifier.label_for(pred.score)
    assert pred.model_version == classifier.version


@pytest.mark.parametrize(
    ("fmt", "options", "expected_format", "tolerance"),
    [
        ("JPEG", {"quality": 95}, "JPEG", 4.0),
        ("PNG", {}, "PNG", 0.0),
        ("WEBP", {"lossless": True}, "WEBP", 0.0),
        ("WEBP", {"quality": 90}, "WEBP", 4.0),
        ("GIF", {}, "GIF", 12.0),  # palette quantisation
        ("BMP", {}, "BMP", 0.0),
        ("TIFF", {}, "TIFF", 0.0),
        ("TIFF", {"compression": "tiff_lzw"}, "TIFF", 0.0),
    ],
)
def test_each_format_decodes_to_the_model_input_and_classifies(
    classifier, prep, encode, photo, fmt, options, expected_format, tolerance
):
    # Given a 320x200 image in this format
    data = encode(photo, fmt, **options)

    # When it is decoded and classified
    decoded = classifier.decode(data)
    pred = classifier.classify_one(data)

    # Then the model gets its input size, close to a plain resize of the original
    assert_model_ready(decoded.pixels, prep)
    assert (decoded.width, decoded.height, decoded.format) == (320, 200, expected_format)
    assert mean_abs_diff(decoded.pixels, reference(photo, prep)) <= tolerance
    assert_prediction(pred, classifier)


def test_animated_gif_uses_the_first_frame(classifier, encode):
    red = Image.new("RGB", (64, 48), (255, 0, 0))
    blue = Image.new("RGB", (64, 48), (0, 0, 255))
    green = Image.new("RGB", (64, 48), (0, 255, 0))
    data = encode(red, "GIF", save_all=True, append_images=[blue, green], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3

    decoded = classifier.decode(data)

    assert np.abs(decoded.pixels.astype(int) - (255, 0, 0)).max() <= 2
    assert_prediction(classifier.classify_one(data), classifier)


def test_animated_webp_uses_the_first_frame(classifier, encode):
    green = Image.new("RGB", (64, 48), (0, 255, 0))
    blue = Image.new("RGB", (64, 48), (0, 0, 255))
    data = encode(green, "WEBP", save_all=True, append_images=[blue], lossless=True)

    decoded = classifier.decode(data)

    assert np.abs(decoded.pixels.astype(int) - (0, 255, 0)).max() <= 2


@pytest.mark.parametrize(
    ("orientation", "undo"),
    [
        (6, Image.Transpose.ROTATE_90),
        (8, Image.Transpose.ROTATE_270),
        (3, Image.Transpose.ROTATE_180),
    ],
)
def test_exif_orientation_is_applied(classifier, encode, smooth, orientation, undo):
    # Given the upright image (200 wide, 320 tall), and the same picture stored
    # sideways with an EXIF tag saying how to turn it upright
    upright = smooth(200, 320, seed=3)
    stored = upright.transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    plain = encode(upright, "JPEG", quality=95)

    # When both are decoded
    rotated = classifier.decode(tagged)
    expected = classifier.decode(plain)

    # Then the model sees the same upright pixels, up to JPEG noise,
    # and the reported size is the upright one
    assert mean_abs_diff(rotated.pixels, expected.pixels) < 3.0
    assert (rotated.width, rotated.height) == (200, 320)


def test_near_square_jpeg_without_exif_keeps_its_size(classifier, encode):
    # JPEG draft decoding turns 2055x2049 into 257x257; that must not be taken
    # for an EXIF quarter turn (regression).
    data = encode(Image.new("RGB", (2055, 2049), (10, 120, 200)), "JPEG", quality=80)

    decoded = classifier.decode(data)

    assert (decoded.width, decoded.height) == (2055, 2049)
    assert np.abs(decoded.pixels.astype(int) - (10, 120, 200)).max() <= 3


def test_large_jpeg_is_drafted_and_resized(classifier, prep, encode, smooth):
    big = smooth(1600, 1200, seed=5)
    decoded = classifier.decode(encode(big, "JPEG", quality=90))

    assert_model_ready(decoded.pixels, prep)
    assert (decoded.width, decoded.height) == (1600, 1200)
    # Draft decoding is an approximation of the full-size resize, not a different picture.
    assert mean_abs_diff(decoded.pixels, reference(big, prep)) < 4.0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_becomes_three_equal_channels(classifier, encode, fmt):
    gray = Image.fromarray(np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1)), "L")

    decoded = classifier.decode(encode(gray, fmt))

    px = decoded.pixels
    assert np.array_equal(px[..., 0], px[..., 1])
    assert np.array_equal(px[..., 1], px[..., 2])
    assert_prediction(classifier.classify_one(encode(gray, fmt)), classifier)


def test_cmyk_jpeg_becomes_rgb(classifier, encode):
    # Cyan-free, full magenta and yellow: red.
    data = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95)

    decoded = classifier.decode(data)

    assert np.abs(decoded.pixels.astype(int) - (255, 0, 0)).max() <= 6
    assert_prediction(classifier.classify_one(data), classifier)


def test_transparent_png_equals_the_card_background(classifier, prep, encode):
    # Given a fully transparent image whose hidden colours are random
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, size=(48, 64, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    transparent = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    solid = encode(Image.new("RGB", (64, 48), prep.background), "PNG")

    # Then it decodes exactly like a solid image of the card's background colour
    assert np.array_equal(classifier.decode(transparent).pixels, classifier.decode(solid).pixels)
    assert np.all(classifier.decode(transparent).pixels == prep.background)


def test_half_transparent_png_is_composited(classifier, prep, encode):
    black_half = Image.new("RGBA", (32, 32), (0, 0, 0, 128))

    decoded = classifier.decode(encode(black_half, "PNG"))

    expected = np.array(prep.background) * (1 - 128 / 255)
    assert np.abs(decoded.pixels - expected).max() <= 2


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_other_alpha_modes_use_the_background(classifier, prep, encode, mode):
    if mode == "LA":
        img = Image.new("LA", (32, 32), (0, 0))
    else:
        img = Image.new("P", (32, 32), 0)
        img.putpalette([0, 0, 0] * 256)
        img.info["transparency"] = 0
    decoded = classifier.decode(encode(img, "PNG"))

    assert np.all(decoded.pixels == prep.background)


def test_16_bit_png_is_scaled_not_clipped(classifier, encode):
    # Given 16-bit grayscale at half scale, and a full 0..65535 ramp
    half = Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16))
    ramp = Image.fromarray(np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1)))
    assert Image.open(io.BytesIO(encode(half, "PNG"))).mode.startswith("I")

    # Then 32768 reads as ~128 (clipping would give 255) and the ramp spans 0..255
    assert np.abs(classifier.decode(encode(half, "PNG")).pixels.astype(int) - 128).max() <= 1
    ramp_px = classifier.decode(encode(ramp, "PNG")).pixels
    assert ramp_px.min() <= 1
    assert ramp_px.max() >= 254


def test_16_bit_tiff_is_scaled(classifier, encode):
    data = encode(Image.fromarray(np.full((16, 16), 16384, dtype=np.uint16)), "TIFF")

    assert np.abs(classifier.decode(data).pixels.astype(int) - 64).max() <= 1


# -- refused inputs ----------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG that claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def assert_refused(classifier: Classifier, data: bytes, error: type[ImageError]) -> ImageError:
    """Both entry points raise/return the same typed error, never a Pillow one."""
    with pytest.raises(error) as info:
        classifier.classify_one(data)
    assert info.value.code == error.code
    [result] = classifier.classify([data])
    assert isinstance(result, error)
    return info.value


def test_truncated_jpeg_is_undecodable(classifier, encode, photo):
    data = encode(photo, "JPEG", quality=90)
    assert_refused(classifier, data[: len(data) // 2], UndecodableImage)


def test_text_is_undecodable(classifier):
    assert_refused(classifier, b"this is a text file, not an image\n" * 4, UndecodableImage)


def test_empty_file_is_undecodable(classifier):
    assert_refused(classifier, b"", UndecodableImage)


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "EPS", "PCX"])
def test_formats_pillow_knows_but_deepscreen_refuses(classifier, encode, fmt):
    data = encode(Image.new("RGB", (32, 32), (1, 2, 3)), fmt)
    err = assert_refused(classifier, data, UnsupportedImage)
    assert fmt in str(err)


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (100_000, 100_000),  # over Pillow's own bomb limit
        (10_000, 6_000),  # under Pillow's, over deepscreen's default 50 Mpx
    ],
)
def test_decompression_bomb_is_refused_without_allocating(classifier, width, height):
    data = png_header(width, height)
    assert len(data) < 100

    tracemalloc.start()
    try:
        assert_refused(classifier, data, OversizedImage)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 5 * 1024 * 1024  # the claimed image would be 180 MB to 30 GB


def test_pixel_limit_is_configurable(model_dir, encode):
    small_limit = Classifier(model_dir, num_threads=1, max_pixels=64 * 64)
    assert isinstance(
        small_limit.classify_one(encode(Image.new("RGB", (64, 64)), "PNG")), Prediction
    )
    with pytest.raises(OversizedImage):
        small_limit.classify_one(encode(Image.new("RGB", (65, 64)), "PNG"))


def test_byte_size_limit(model_dir, encode, photo):
    data = encode(photo, "PNG")
    at_limit = Classifier(model_dir, num_threads=1, max_bytes=len(data))
    under_limit = Classifier(model_dir, num_threads=1, max_bytes=len(data) - 1)

    assert isinstance(at_limit.classify_one(data), Prediction)
    with pytest.raises(OversizedImage, match="bytes"):
        under_limit.classify_one(data)


def test_errors_are_per_item_in_a_batch(classifier, encode, photo):
    good = encode(photo, "PNG")
    items = [good, b"", good, b"GIF89a broken", encode(Image.new("RGB", (8, 8)), "ICO"), good]

    results = classifier.classify(items)

    assert [type(r) for r in results] == [
        Prediction,
        UndecodableImage,
        Prediction,
        UndecodableImage,
        UnsupportedImage,
        Prediction,
    ]
