"""The pixel limit an oversized image is refused with is the configured one
(``DEEPSCREEN_MAX_IMAGE_PIXELS``), not Pillow's own decompression-bomb limit, whatever
the size: under Pillow's warning limit, between its warning and error limits, above both."""

from __future__ import annotations

import pytest
from PIL import Image
from test_inference_inputs import png_header

from deepscreen.errors import OversizedImage
from deepscreen.imaging import open_rgb

PILLOW_MAX = Image.MAX_IMAGE_PIXELS or 0
PILLOW_LIMITS = (str(PILLOW_MAX), str(2 * PILLOW_MAX))


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (10_000, 6_000),  # 60 Mpx: under Pillow's limits
        (10_000, 10_000),  # 100 Mpx: over Pillow's warning limit (about 89 Mpx)
        (100_000, 100_000),  # 10 Gpx: over Pillow's error limit (about 179 Mpx)
    ],
)
def test_an_oversized_image_names_the_configured_limit(width: int, height: int) -> None:
    with pytest.raises(OversizedImage) as refused:
        open_rgb(png_header(width, height), draft_side=None, max_pixels=50_000_000)
    message = str(refused.value)
    # Above Pillow's error limit, its header is read no further: the count, not the sides
    size = f"{width}x{height}" if width * height < 2 * PILLOW_MAX else str(width * height)
    assert message == f"{size} pixels is over the limit of 50000000"
    assert not any(limit in message for limit in PILLOW_LIMITS), message
    assert "bomb" not in message


def test_a_configured_limit_above_pillows_warning_limit_is_honoured() -> None:
    # Given a 100 Mpx image and a configured limit of 120 Mpx
    data = png_header(10_000, 10_000)
    # Then it is not refused for its size (the tiny header has no real pixel data)
    with pytest.raises(Exception) as refused:
        open_rgb(data, draft_side=None, max_pixels=120_000_000)
    assert not isinstance(refused.value, OversizedImage), refused.value
