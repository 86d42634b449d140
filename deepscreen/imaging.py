"""Image decoding and resizing: the preprocessing contract shared by training and serving.

Training reads every image through `decode_image`, and the serving class does the
same with the `Preprocessing` stored in the model card, so a model never sees
pixels prepared differently from those it was trained on. Normalisation (scaling
to the backbone's range) lives inside the model itself, not here.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from deepscreen.errors import OversizedImage, UndecodableImage, UnsupportedImage

#: Formats deepscreen decodes. Others that Pillow can identify (EPS, PSD, ICO...)
#: are refused as unsupported rather than handed to riskier decoders.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})

DEFAULT_MAX_BYTES = 40 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000

#: Pillow filters by the names cards use.
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """How raw image bytes become the model's input pixels.

    Stored in the model card under ``preprocessing`` and read back by the
    serving class; `to_card`/`from_card` round-trip it.
    """

    height: int
    width: int
    #: Pillow filter used for the one resize to (width, height).
    resample: str = "bilinear"
    #: "stretch": the whole image is resized to the input size; aspect ratio is not kept.
    resize: str = "stretch"
    #: JPEG draft mode: decode at the smallest 1/2^k scale still >= the input size.
    jpeg_draft: bool = True
    #: Transparent pixels are composited onto this colour.
    background: tuple[int, int, int] = (255, 255, 255)
    #: Channel order and dtype handed to the model; values span 0..255.
    color: str = "RGB"
    dtype: str = "uint8"
    exif_transpose: bool = True
    #: What the model does itself after these steps (documentation only).
    in_model: str = field(default="x / 127.5 - 1 (MobileNetV2 scaling) inside the graph")

    def __post_init__(self) -> None:
        if self.resample not in RESAMPLE:
            raise ValueError(f"unknown resample filter {self.resample!r}")
        if self.resize != "stretch":
            raise ValueError(f"unknown resize mode {self.resize!r}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), Pillow's order."""
        return (self.width, self.height)

    def to_card(self) -> dict[str, Any]:
        card = asdict(self)
        card["background"] = list(self.background)
        return card

    @classmethod
    def from_card(cls, card: dict[str, Any]) -> Preprocessing:
        known = {k: v for k, v in card.items() if k in cls.__dataclass_fields__}
        if "background" in known:
            known["background"] = tuple(known["background"])
        return cls(**known)


@dataclass(frozen=True)
class DecodedImage:
    """Model-ready pixels plus what was learnt about the original."""

    pixels: np.ndarray  # (height, width, 3) uint8
    width: int  # original width, after EXIF orientation
    height: int
    format: str


def decode_image(
    data: bytes,
    prep: Preprocessing,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode ``data`` into an RGB uint8 array of the model's input size.

    Raises UndecodableImage, UnsupportedImage or OversizedImage; never a Pillow error.
    """
    opened = open_rgb(
        data,
        draft_side=max(prep.width, prep.height) if prep.jpeg_draft else None,
        background=prep.background,
        exif_transpose=prep.exif_transpose,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
    )
    rgb = opened.image
    try:
        if rgb.size != prep.size:
            rgb = rgb.resize(prep.size, RESAMPLE[prep.resample], reducing_gap=None)
        pixels = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise UndecodableImage(f"corrupt image data: {exc}") from exc
    return DecodedImage(pixels=pixels, width=opened.width, height=opened.height, format=opened.format)


@dataclass(frozen=True)
class OpenedImage:
    """A decoded RGB image (possibly JPEG-drafted) and what is known of the original."""

    image: Image.Image
    width: int  # original width, after EXIF orientation
    height: int
    format: str


def open_rgb(
    data: bytes,
    *,
    draft_side: int | None,
    background: tuple[int, int, int] = (255, 255, 255),
    exif_transpose: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> OpenedImage:
    """Decode ``data`` to 8-bit RGB, checking size limits and format.

    ``draft_side``: JPEGs are decoded at the smallest 1/2^k scale whose sides stay at
    least this long (None: full size). Raises UndecodableImage, UnsupportedImage or
    OversizedImage; never a Pillow error.
    """
    if not data:
        raise UndecodableImage("empty file")
    if len(data) > max_bytes:
        raise OversizedImage(f"{len(data)} bytes is over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            # The configured limit decides, below: Pillow's own (about 89 Mpx) is not ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in SUPPORTED_FORMATS:
                raise UnsupportedImage(f"{fmt} images are not supported")
            w, h = img.size
            if w * h > max_pixels:
                raise OversizedImage(f"{w}x{h} pixels is over the limit of {max_pixels}")
            if w == 0 or h == 0:
                raise UndecodableImage("image has no pixels")
            if draft_side and fmt in ("JPEG", "MPO"):
                img.draft("RGB", (draft_side, draft_side))
            img.load()  # first frame only for animations
            orig_w, orig_h = w, h
            if exif_transpose:
                if _is_quarter_turn(img):
                    orig_w, orig_h = h, w
                img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img, background)
            rgb.load()
    except Image.DecompressionBombError as exc:
        # Over twice Pillow's limit it refuses to open the file at all, so the size comes
        # from its message ("Image size (N pixels) exceeds ..."); the limit quoted is the
        # configured one, or Pillow's if that is lower (it cannot be raised per call).
        pixels = str(exc).partition("(")[2].partition(" pixels")[0]
        what = f"{pixels} pixels" if pixels.isdigit() else "the image"
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise OversizedImage(f"{what} is over the limit of {limit}") from exc
    except UnidentifiedImageError as exc:
        raise UndecodableImage("not a recognised image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow signals truncated and corrupt streams with these.
        raise UndecodableImage(f"corrupt image data: {exc}") from exc
    return OpenedImage(image=rgb, width=orig_w, height=orig_h, format=fmt)


def _is_quarter_turn(img: Image.Image) -> bool:
    """True if the image's orientation tag (EXIF, or XMP as Pillow reads it) swaps width and height.

    Read from the tag rather than guessed from the aspect ratio, which JPEG draft
    rounding can make square (a 2055x2049 image drafts to 257x257).
    """
    return img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; alpha composited onto ``background``."""
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _high_depth_to_l(img)
        mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        canvas = Image.new("RGB", img.size, background)
        canvas.paste(img, mask=img.getchannel("A"))
        return canvas
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except ValueError as exc:
            raise UnsupportedImage(f"image mode {mode} is not supported") from exc
    return img


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit or float grayscale to 8-bit, scaling rather than clipping."""
    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    else:
        # 16-bit data (Pillow may report it as "I"): 0..65535 maps to 0..255.
        scaled = arr.astype(np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
