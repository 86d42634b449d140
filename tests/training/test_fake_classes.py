"""A softmax over real and each kind of fake (``fake_classes``), whose one output is
P(fake) = 1 - P(real): trained, exported and served like the sigmoid model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_model import TINY

from deepscreen.cli import main
from deepscreen.inference import Classifier
from training.data import Sample
from training.hparams import HParams, load_hparams
from training.model import build_model, family_head
from training.train import family_names, family_targets


def _tiny_model(fake_classes: int, **extra: str):
    """The tests' tiny model, built (untrained) with ``fake_classes`` (and ``extra``)."""
    overrides = dict(p.split("=", 1) for p in TINY)
    return build_model(
        load_hparams(None, {**overrides, "fake_classes": str(fake_classes), **extra})
    )


def _sample(source: str, label: int) -> Sample:
    return Sample(path=Path(f"{source}-{label}.png"), label=label, source=source)


def test_family_names_keep_the_parents_order_and_append_new_kinds() -> None:
    samples = [_sample("ffhq", 0), _sample("sdfd", 1), _sample("corrections", 1), _sample("a", 1)]
    hp = HParams(fake_classes=6, fake_class_names="sdfd,stylegan")
    # The parent's classes keep their places (sdfd stays 1 though "a" sorts first);
    # new kinds follow, sorted; real sources are not kinds of fake.
    assert family_names(hp, samples) == ["sdfd", "stylegan", "a", "corrections"]
    with pytest.raises(ValueError, match="need fake_classes >= 5, not 4"):
        family_names(HParams(fake_classes=4, fake_class_names="sdfd,stylegan"), samples)


def test_family_targets_are_one_hot_with_real_as_class_zero() -> None:
    samples = [_sample("ffhq", 0), _sample("b", 1), _sample("a", 1), _sample("ciplab", 0)]
    y = family_targets(samples, ["a", "b"], 4)
    assert y.tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0]]


def test_the_single_output_is_one_minus_the_real_class() -> None:
    model = _tiny_model(fake_classes=4)
    x = np.random.default_rng(3).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    probs = family_head(model).predict(x, verbose=0)
    fake = model.predict(x, verbose=0)
    assert fake.shape == (6, 1)
    np.testing.assert_allclose(fake[:, 0], 1.0 - probs[:, 0], atol=1e-6)
    assert not model.get_layer("fake_probability").trainable


def _two_kinds(synthetic_tree: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A manifest of real images and two sources of fakes, and the fakes' paths."""
    manifest = tmp_path / "data.csv"
    fakes = sorted((synthetic_tree / "fake").glob("*.png"))
    with manifest.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "label", "source"])
        for p in sorted((synthetic_tree / "real").glob("*.png")):
            out.writerow([p, "real", "photos"])
        for i, p in enumerate(fakes):
            out.writerow([p, "fake", "gan-b" if i % 2 else "gan-a"])
    return manifest, fakes


def _train(manifest: Path, out: Path, work: Path, *, fake_classes: int) -> int:
    """`deepscreen train` of the tiny recipe with ``fake_classes`` on ``manifest``."""
    args = [a for p in [*TINY, f"fake_classes={fake_classes}"] for a in ("--set", p)]
    data = ["--data", f"csv:{manifest}", "--out", str(out), "--work-dir", str(work)]
    return main(["train", *data, *args])


def test_more_kinds_of_fake_than_classes_is_refused_with_the_fix(
    synthetic_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, _ = _two_kinds(synthetic_tree, tmp_path)
    rc = _train(manifest, tmp_path / "m", tmp_path / "w", fake_classes=2)
    assert rc == 2
    assert "2 kinds of fake (gan-a, gan-b) need fake_classes >= 3" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_train_and_export_a_model_with_a_class_per_kind_of_fake(
    synthetic_tree: Path, tmp_path: Path
) -> None:
    # Given real images and two sources of fakes in one manifest
    manifest, fakes = _two_kinds(synthetic_tree, tmp_path)
    model_dir = tmp_path / "model"
    # When `deepscreen train` trains a softmax over real and the kinds of fake
    rc = _train(manifest, model_dir, tmp_path / "work", fake_classes=4)
    # Then it learns real from fake, the card names the classes, and the export (its
    # parity check included) serves one P(fake) per image
    assert rc == 0
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["hyperparameters"]["fake_classes"] == 4
    assert card["hyperparameters"]["fake_class_names"] == "gan-a,gan-b"
    assert card["metrics"]["validation"]["overall"]["operating"]["roc_auc"] >= 0.95
    clf = Classifier(model_dir, num_threads=1)
    scores = [clf.classify_one(p.read_bytes()).score for p in fakes[:4]]
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_a_parent_card_from_before_fake_classes_is_a_sigmoid_model() -> None:
    from training.adapt import parent_hparams

    old = parent_hparams({"hyperparameters": {"image_size": 224, "dropout": 0.3}})
    new = parent_hparams(
        {"hyperparameters": {"fake_classes": 8, "fake_class_names": "ciplab,sdfd"}}
    )
    assert old.fake_classes == 0
    assert (new.fake_classes, new.fake_class_names) == (8, "ciplab,sdfd")


def test_a_new_kind_of_fake_starts_from_the_known_kinds_mean() -> None:
    from training.model import FAMILY_LAYER, seed_new_classes

    model = _tiny_model(fake_classes=5)
    layer = model.get_layer(FAMILY_LAYER)
    kernel, bias = layer.get_weights()
    kernel = np.random.default_rng(5).normal(size=kernel.shape).astype("float32")
    bias = np.array([0.5, 1.0, 3.0, -9.0, -9.0], "float32")
    layer.set_weights([kernel, bias])
    # Given a parent that knew two kinds, when a third (the corrections) is added
    seed_new_classes(model, known=2, used=3)
    new_kernel, new_bias = layer.get_weights()
    # Then the new class starts from the mean of the known kinds; the rest are as they were
    np.testing.assert_allclose(new_kernel[:, 3], kernel[:, 1:3].mean(axis=1), rtol=1e-6)
    assert new_bias[3] == pytest.approx(2.0)
    np.testing.assert_array_equal(new_kernel[:, [0, 1, 2, 4]], kernel[:, [0, 1, 2, 4]])
    assert new_bias[4] == -9.0


def test_a_kinds_score_weight_scales_its_class_in_the_single_output(tmp_path: Path) -> None:
    from training.model import set_score_weights

    x = np.random.default_rng(4).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    # Given classes real, a, b, c (one spare) with a weighted 0.25 and an unnamed kind at 0.5
    model = _tiny_model(4, fake_class_names="a,b", fake_class_weights="a=0.25,zz=0.5")
    probs = family_head(model).predict(x, verbose=0)
    # Then the score is the fake classes' probabilities, a's at a quarter, the rest whole
    expected = 0.25 * probs[:, 1] + probs[:, 2] + probs[:, 3]
    np.testing.assert_allclose(model.predict(x, verbose=0)[:, 0], expected, atol=1e-6)
    # Given weights saved by a recipe that counted every kind alike (an older parent),
    # when they are loaded the file's score weights come with them ...
    plain = _tiny_model(4, fake_class_names="a,b", fake_class_weights="")
    plain.set_weights(model.get_weights()[:-1] + [plain.get_weights()[-1]])
    plain.save_weights(tmp_path / "plain.weights.h5")
    model.load_weights(tmp_path / "plain.weights.h5")
    np.testing.assert_allclose(model.predict(x, verbose=0)[:, 0], 1 - probs[:, 0], atol=1e-6)
    # ... and the recipe's weights are what set_score_weights restores
    hp = load_hparams(
        None,
        {
            **dict(p.split("=", 1) for p in TINY),
            "fake_classes": "4",
            "fake_class_names": "a,b",
            "fake_class_weights": "a=0.25",
        },
    )
    set_score_weights(model, hp)
    np.testing.assert_allclose(model.predict(x, verbose=0)[:, 0], expected, atol=1e-6)


def test_score_weights_are_checked_and_old_cards_count_every_kind_alike() -> None:
    from training.adapt import parent_hparams
    from training.hparams import class_weights

    assert class_weights(" ciplab=0.8 , sdfd=1,") == {"ciplab": 0.8, "sdfd": 1.0}
    assert class_weights("") == {}
    for bad in ("ciplab", "ciplab=high", "=0.5", "ciplab=1.5", "ciplab=-0.1"):
        with pytest.raises(ValueError, match="fake_class_weights"):
            HParams(fake_class_weights=bad)
    # A card from before the weights scored every kind alike; a newer one keeps its own.
    assert parent_hparams({"hyperparameters": {"fake_classes": 8}}).fake_class_weights == ""
    recorded = {"hyperparameters": {"fake_classes": 8, "fake_class_weights": "ciplab=0.8"}}
    assert parent_hparams(recorded).fake_class_weights == "ciplab=0.8"
