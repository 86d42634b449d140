"""The shipped default model reproduces its documented validation figures on ../shared."""

from __future__ import annotations

import hashlib

import pytest

from deepscreen.inference import Classifier, default_model_dir
from training.data import read_source, split_samples
from training.evaluate import evaluate_scores, fpr_per_real_source, score_through_serving
from training.hparams import HParams

from .conftest import SHARED, SHARED_DATA, requires_shared

SHARED_MORE = SHARED / "data-more"


def test_card_describes_the_committed_files() -> None:
    clf = Classifier()
    folder = default_model_dir()
    model = (folder / "model.tflite").read_bytes()
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
        "face_stage",
    ):
        assert key in clf.card, key
    assert clf.face_stage is not None
    assert clf.card["training"]["total_wall_time_s"] > 0
    assert {s["name"] for s in clf.card["training"]["sources"]} == {
        "ciplab", "ffhq-stylegan", "hardfakevsreal", "sdfd", "sd3", "pixabay"
    }
    assert all("licence" in s for s in clf.card["training"]["sources"])
    # The Keras weights that adapt and retraining continue from travel with the model
    weights = folder / clf.card["weights"]["file"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == clf.card["weights"]["sha256"]


@requires_shared
@pytest.mark.skipif(not SHARED_MORE.is_dir(), reason=f"{SHARED_MORE} is absent")
def test_default_model_validation_figures_are_as_documented() -> None:
    # Given the default model and the validation split it was trained with
    clf = Classifier(num_threads=2)
    hp = HParams().with_overrides(
        {k: clf.card["hyperparameters"][k] for k in ("val_fraction", "seed")}
    )
    samples = read_source(str(SHARED_DATA)) + read_source(str(SHARED_MORE))
    valid = split_samples(samples, hp.val_fraction, hp.seed)["valid"]
    # When it scores those image files through the serving class
    scored = score_through_serving(clf, valid)
    ev = evaluate_scores(scored.scores, scored.samples, clf.threshold)
    # Then every documented figure is reproduced
    documented = clf.card["metrics"]["serving_validation"]
    for source, metrics in documented["per_source"].items():
        got, want = ev.per_source[source]["operating"], metrics["operating"]
        assert got["n"] == want["n"], source
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=0.005), source
        if want["roc_auc"] is not None:
            assert got["roc_auc"] == pytest.approx(want["roc_auc"], abs=0.005), source
    # And the threshold keeps its promise on every real source (5 % target, 2 points)
    labels = [s.label for s in scored.samples]
    rates = fpr_per_real_source(scored.scores, labels, [s.source for s in scored.samples],
                                clf.threshold)
    assert set(rates) == {"ciplab", "ffhq-stylegan", "hardfakevsreal", "pixabay"}
    assert all(r["fpr"] <= 0.07 for r in rates.values()), rates
