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


class ConfigError(PermanentError, ValueError):
    """A DEEPSCREEN_* setting that is missing or malformed; the message names it."""


class StorageError(DeepscreenError):
    """Base of every storage error; subclasses are also Transient or Permanent."""

    #: Short machine-readable reason stored with a failed image.
    code = "storage_error"


class StorageUnavailable(StorageError, TransientError):
    """Endpoint unreachable, timed out, throttling or a 5xx: try again later."""

    code = "storage_unavailable"


class BucketNotFound(StorageError, PermanentError):
    """The bucket (or local root folder) does not exist."""

    code = "missing_bucket"


class ObjectNotFound(StorageError, PermanentError):
    """No object under that key (deleted since it was listed, or never there)."""

    code = "missing_object"


class StorageAccessDenied(StorageError, PermanentError):
    """Bad or unknown credentials, or the identity may not do this."""

    code = "access_denied"


class InvalidKey(StorageError, PermanentError):
    """A key that is empty, absolute or escapes the store's root."""

    code = "invalid_key"


class DatabaseUnavailable(TransientError):
    """The database refused or dropped the connection, or a lock timed out."""


class StorageRequestRejected(StorageError, PermanentError):
    """Any other client error (4xx) the store answered; retrying will not help."""

    code = "storage_rejected"
