"""The shipped default model reproduces its documented validation figures on ../shared/data."""

from __future__ import annotations

import hashlib

import pytest

from deepscreen.inference import Classifier, default_model_dir
from training.data import load_pixels, read_source, split_samples
from training.evaluate import evaluate_scores
from training.hparams import HParams

from .conftest import SHARED_DATA, requires_shared


def test_card_describes_the_committed_file() -> None:
    clf = Classifier()
    model = (default_model_dir() / "model.tflite").read_bytes()
    assert clf.version == hashlib.sha256(model).hexdigest() == clf.card["version"]
    assert clf.card["export"]["size_bytes"] == len(model)
    if clf.card["export"]["dtype"] == "float16":
        assert len(model) <= 5 * 1024 * 1024
    for key in (
        "metrics",
        "thresholds",
        "training",
        "hyperparameters",
        "libraries",
        "preprocessing",
    ):
        assert key in clf.card, key
    assert clf.card["training"]["total_wall_time_s"] > 0
    assert {s["name"] for s in clf.card["training"]["sources"]} == {"ciplab", "ffhq-stylegan"}
    assert all("licence" in s for s in clf.card["training"]["sources"])


@requires_shared
def test_default_model_validation_accuracy_is_as_documented() -> None:
    # Given the default model and the validation split it was trained with
    clf = Classifier(num_threads=2)
    hp = HParams().with_overrides(
        {k: clf.card["hyperparameters"][k] for k in ("val_fraction", "seed")}
    )
    valid = split_samples(read_source(str(SHARED_DATA)), hp.val_fraction, hp.seed)["valid"]
    loaded = load_pixels(valid, clf.preprocessing)
    assert not loaded.failed
    # When it scores those images through the serving class
    ev = evaluate_scores(clf.predict_pixels(loaded.pixels), loaded.samples, clf.threshold)
    # Then every documented figure is reproduced
    documented = clf.card["metrics"]["validation"]
    for source, metrics in documented["per_source"].items():
        for point in ("operating", "half"):
            got, want = ev.per_source[source][point], metrics[point]
            assert got["n"] == want["n"]
            assert got["accuracy"] == pytest.approx(want["accuracy"], abs=0.005), (source, point)
            assert got["roc_auc"] == pytest.approx(want["roc_auc"], abs=0.005), (source, point)
