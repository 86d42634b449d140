"""Hyperparameter loading and the evaluation arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.evaluate import binary_metrics, threshold_at_fpr
from training.hparams import HParams, load_hparams


def test_hparams_toml_restates_the_documented_defaults() -> None:
    assert load_hparams() == HParams()


def test_hparams_overrides_are_typed_and_checked(tmp_path: Path) -> None:
    f = tmp_path / "hp.toml"
    f.write_text("image_size = 64\naugment = false\n")
    hp = load_hparams(f, {"dropout": "0.5", "flip": "no"})
    assert (hp.image_size, hp.augment, hp.dropout, hp.flip) == (64, False, 0.5, False)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        load_hparams(f, {"learning_rat": "1"})
    with pytest.raises(ValueError):
        HParams(export_dtype="int8")


def test_threshold_at_fpr_meets_the_target_with_margin() -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.beta(2, 5, 400), rng.beta(5, 2, 400)])
    labels = np.array([0] * 400 + [1] * 400)
    t = threshold_at_fpr(scores, labels, 0.05)
    fpr = float(np.mean(scores[labels == 0] >= t))
    assert fpr <= 0.05 and fpr >= 0.04  # as close to the target as the data allows
    assert not np.any(np.isclose(scores, t, atol=1e-9))  # never exactly on a sample


def test_binary_metrics_on_a_known_example() -> None:
    scores = np.array([0.1, 0.6, 0.4, 0.9])
    labels = np.array([0, 0, 1, 1])
    m = binary_metrics(scores, labels, 0.5)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert (m["accuracy"], m["precision"], m["recall"], m["fpr"]) == (0.5, 0.5, 0.5, 0.5)
    assert m["roc_auc"] == pytest.approx(0.75)


def test_threshold_at_fpr_keeps_clear_of_saturated_scores() -> None:
    # Given a confidently wrong model: reals saturate at or just below 1.0, one float32
    # step apart, so no midpoint between them survives a rounding difference
    one = np.float32(1.0)
    below_one = np.nextafter(one, np.float32(0))
    scores = np.array([0.2, 0.3] + [below_one] * 10 + [one] * 10 + [0.9, 0.1], np.float32)
    labels = np.array([0, 0] + [0] * 20 + [1, 1])
    # When the threshold is chosen for 5% false positives
    t = threshold_at_fpr(scores, labels, 0.05)
    # Then it sits above the saturated cluster, at least the margin from every score,
    # and the false-positive rate is within the target
    assert t > 1.0 and np.min(np.abs(scores.astype(float) - t)) >= 1e-3 - 1e-12
    assert np.mean(scores[labels == 0] >= t) <= 0.05
    # And a gap narrower than twice the margin is skipped for the next wide one
    narrow = np.array([0.1, 0.50000, 0.50005, 0.50008, 0.7, 0.8])
    t = threshold_at_fpr(narrow, np.array([0, 0, 0, 1, 1, 1]), 0.0)
    logit = lambda p: np.log(p / (1 - p))
    assert logit(t) == pytest.approx((logit(0.50008) + logit(0.7)) / 2)
    # And a target that allows every real above it calls every image fake
    assert threshold_at_fpr(narrow, np.array([0, 0, 0, 1, 1, 1]), 1.0) < 0.1


def test_threshold_stays_next_to_the_reals_when_a_confident_models_scores_crowd_near_one() -> None:
    from training.evaluate import fpr_per_real_source, threshold_for_sources

    # Given a confident model: 7.5 % of each real source and most fakes score above 0.99,
    # where neighbouring scores are far closer than the 0.001 margin (an adapted model
    # measured here got threshold 1.0, recall 0, from such scores)
    rng = np.random.default_rng(1)
    crowd = lambda n: 1 - 10 ** rng.uniform(-6, -2, n)  # 0.99 .. 0.999999
    reals = {name: np.r_[rng.uniform(0, 0.5, 185), crowd(15)] for name in ("a", "b")}
    fakes = np.r_[crowd(900), rng.uniform(0.5, 0.99, 100)]
    scores = np.r_[reals["a"], reals["b"], fakes]
    labels = np.r_[np.zeros(400), np.ones(1000)].astype(int)
    sources = ["a"] * 200 + ["b"] * 200 + ["fake"] * 1000
    # When the thresholds are chosen
    for t in (threshold_for_sources(scores, labels, sources, 0.05),
              threshold_at_fpr(scores, labels, 0.05)):
        rates = fpr_per_real_source(scores, labels, sources, t)
        # Then they keep the promise, still call most of the crowded fakes fake, and
        # keep clear of every score in logits
        fprs = [r["fpr"] for r in rates.values()]
        assert np.mean(fprs) <= 0.05 and max(fprs) <= 0.07
        assert t < 1.0 and np.mean(fakes >= t) > 0.5
        gaps = np.abs(np.log(scores / (1 - scores)) - np.log(t / (1 - t)))
        assert gaps.min() >= 4e-3 - 1e-9


def test_threshold_for_sources_holds_on_every_real_source() -> None:
    from training.evaluate import fpr_per_real_source, threshold_for_sources

    # Given a large real source that scores low and a small one that scores higher
    rng = np.random.default_rng(0)
    big = rng.uniform(0.0, 0.5, 900)
    small = rng.uniform(0.2, 0.9, 100)
    fakes = rng.uniform(0.4, 1.0, 500)
    scores = np.r_[big, small, fakes]
    labels = np.r_[np.zeros(1000), np.ones(500)].astype(int)
    sources = ["big"] * 900 + ["small"] * 100 + ["fake"] * 500
    # When the threshold is chosen with every real source counted equally
    t = threshold_for_sources(scores, labels, sources, 0.05)
    rates = {k: v["fpr"] for k, v in fpr_per_real_source(scores, labels, sources, t).items()}
    # Then no real source is flagged more than 2 points above the target, and their
    # mean is within it, where a count-pooled threshold lets the small source slip
    assert max(rates.values()) <= 0.07 and np.mean(list(rates.values())) <= 0.05
    pooled = threshold_at_fpr(scores, labels, 0.05)
    assert np.mean(small >= pooled) > 0.07
    assert not np.any(np.abs(np.log(scores / (1 - scores)) - np.log(t / (1 - t))) < 4e-3)


def test_threshold_for_sources_stays_in_range_with_small_and_saturated_sources() -> None:
    from training.evaluate import threshold_for_sources

    # Given a tiny real source (8 images) with one real scored like the fakes, and
    # saturated fake scores
    big = np.linspace(0.0, 0.6, 400)
    tiny = np.r_[np.linspace(0.1, 0.3, 7), 0.9995]
    scores = np.r_[big, tiny, np.full(50, 1.0)]
    labels = np.r_[np.zeros(408), np.ones(50)].astype(int)
    sources = ["big"] * 400 + ["tiny"] * 8 + ["fake"] * 50
    # When the threshold is chosen
    t = threshold_for_sources(scores, labels, sources, 0.05)
    # Then the tiny source does not force the threshold above every real, and the
    # threshold stays a probability the card accepts
    assert 0.0 <= t <= 1.0
    assert t < 0.9995
    assert np.mean(big >= t) <= 0.07
