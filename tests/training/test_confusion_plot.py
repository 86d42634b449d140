"""The confusion-matrix PNG is legible in every cell: its numbers are white on the dark
cells and black on the light ones (issue 14, item 13: a count in black on navy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training.data import Sample
from training.evaluate import cell_text_colour, write_plots


def test_text_colour_follows_the_cell_darkness() -> None:
    assert cell_text_colour((0.03, 0.19, 0.42, 1.0)) == "white"  # Blues at its darkest
    assert cell_text_colour((0.97, 0.98, 1.0, 1.0)) == "black"  # Blues at its lightest


def test_the_darkest_cell_of_the_png_has_white_text(tmp_path: Path) -> None:
    # Given 90 reals, 85 scored right, and 90 fakes, half of them missed: one dark cell
    samples = [Sample(Path(f"r{i}.png"), 0, "real") for i in range(90)]
    samples += [Sample(Path(f"f{i}.png"), 1, "fake") for i in range(90)]
    scores = np.array([0.1] * 85 + [0.9] * 5 + [0.9] * 45 + [0.1] * 45)
    # When the plots are written
    write_plots(scores, samples, 0.5, tmp_path)
    pixels = np.asarray(Image.open(tmp_path / "confusion.png").convert("RGB")).astype(int)
    # Then in the darkest cell (Blues' navy end) the digits are white, never black
    navy = np.all(np.abs(pixels - (8, 48, 107)) < 12, axis=-1)
    rows, cols = np.nonzero(navy)
    assert rows.size > 1000, "no navy cell in the plot"
    cell = pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    white = np.all(cell > 230, axis=-1).sum()
    black = np.all(cell < 40, axis=-1).sum()
    assert white > 5 and black == 0
