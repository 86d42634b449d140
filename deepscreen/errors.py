"""The project's error hierarchy.

Vendor errors (Pillow, LiteRT, botocore, SQLAlchemy) are translated into these at
the boundary, so callers decide on retry versus record by type alone.
"""


class DeepscreenError(Exception):
    """Base of every error deepscreen raises on purpose."""


class TransientError(DeepscreenError):
    """May succeed if tried again later (network, database, storage hiccups)."""


class PermanentError(DeepscreenError):
    """Will fail again on retry: record the reason and move on."""


class ImageError(PermanentError):
    """An input image that cannot be classified."""

    #: Short machine-readable reason stored with a failed image.
    code = "image_error"


class UndecodableImage(ImageError):
    """Empty, truncated or corrupt data, or not an image at all."""

    code = "undecodable"


class UnsupportedImage(ImageError):
    """A real image in a format or mode deepscreen does not handle."""

    code = "unsupported"


class OversizedImage(ImageError):
    """Over the byte-size or pixel-count limit (decompression-bomb guard)."""

    code = "oversized"


class ModelError(PermanentError):
    """A model directory that is missing, incomplete or inconsistent."""
