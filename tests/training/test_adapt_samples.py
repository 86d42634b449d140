"""What an adaptation run trains and validates on: replay, corrections, held-out part."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from training.adapt import CORRECTIONS, AdaptOptions, adaptation_samples
from training.data import Sample
from training.hparams import HParams


def _base() -> list[Sample]:
    return [
        Sample(Path(f"{source}_{label}_{i}.png"), label, source)
        for source in ("a", "b")
        for label in (0, 1)
        for i in range(200)
    ]


def _fixes(n: int) -> list[Sample]:
    return [Sample(Path(f"flag_{i}.png"), i % 2, CORRECTIONS) for i in range(n)]


@pytest.mark.parametrize("repeat", [1, 3])
def test_corrections_are_held_out_repeated_and_keep_their_total_weight(repeat: int) -> None:
    opts = replace(AdaptOptions(), correction_weight=6.0, correction_repeat=repeat, replay_min=100)
    samples = adaptation_samples(_base(), _fixes(50), HParams(), opts)

    trained = [s for s in samples if s.source == CORRECTIONS and s.split == "train"]
    held = [s for s in samples if s.source == CORRECTIONS and s.split == "valid"]
    assert len(held) == 10  # 20 % of 50, by a hash of the name
    assert all(s.weight is None for s in held)
    copies = Counter(s.path for s in trained)
    assert len(copies) == 40 and set(copies.values()) == {repeat}
    assert not set(copies) & {s.path for s in held}
    # Each correction counts correction_weight in all, however many copies it has.
    assert sum(s.weight for s in trained) == pytest.approx(40 * 6.0)

    replay = [s for s in samples if s.source != CORRECTIONS and s.split == "train"]
    assert len(replay) == max(opts.replay_min, opts.replay_per_correction * 50)
    assert Counter((s.source, s.label) for s in replay) == {
        (source, label): len(replay) // 4 for source in ("a", "b") for label in (0, 1)
    }
    valid = [s for s in samples if s.source != CORRECTIONS and s.split == "valid"]
    assert valid and not {s.path for s in valid} & {s.path for s in replay}


def test_the_retraining_job_adapts_with_deepscreen_adapts_default_weight() -> None:
    # The kernel's Settings cannot import training/ (TensorFlow); the two defaults are
    # one decision, kept apart only by that boundary.
    from deepscreen.config import Settings

    assert Settings().retrain_adapt_correction_weight == AdaptOptions().correction_weight
