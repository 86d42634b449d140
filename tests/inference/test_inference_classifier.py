"""Contracts of the serving class and the model card, independent of what the model learnt."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepscreen.errors import ModelError
from deepscreen.imaging import Preprocessing, decode_image
from deepscreen.inference import (
    CARD_FILE,
    MODEL_FILE,
    Classifier,
    Prediction,
    default_model_dir,
)


def test_default_model_dir_is_inside_the_package():
    import deepscreen

    assert default_model_dir() == Path(deepscreen.__file__).resolve().parent / "models" / "default"


def test_version_is_the_sha256_of_the_model_file(classifier, model_dir, card):
    digest = hashlib.sha256((model_dir / MODEL_FILE).read_bytes()).hexdigest()

    assert classifier.version == digest
    if "version" in card:
        assert card["version"] == digest


def test_labels_threshold_and_preprocessing_come_from_the_card(classifier, card):
    assert classifier.card == card
    assert classifier.labels == card["labels"]
    assert classifier.threshold == card["threshold"]
    assert classifier.preprocessing == Preprocessing.from_card(card["preprocessing"])
    assert classifier.input_size == (card["input"]["height"], card["input"]["width"])


def test_preprocessing_contract_round_trips_through_the_card(card):
    prep = Preprocessing.from_card(card["preprocessing"])

    # Through JSON, as the card is stored
    assert Preprocessing.from_card(json.loads(json.dumps(prep.to_card()))) == prep
    # Every field the card carries is understood, none is silently dropped
    assert set(card["preprocessing"]) <= {f.name for f in dataclasses.fields(Preprocessing)}
    # Extra keys written by a newer trainer are tolerated
    assert Preprocessing.from_card({**prep.to_card(), "future_field": 1}) == prep


def test_serving_decodes_exactly_like_training(classifier, card, encode, smooth):
    # Training decodes with the Preprocessing it writes into the card; serving
    # must produce identical pixels from the card alone.
    training_prep = Preprocessing.from_card(card["preprocessing"])
    images = [
        encode(smooth(640, 480, seed=1), "JPEG", quality=85),
        encode(smooth(300, 500, seed=2), "PNG"),
        encode(smooth(256, 256, seed=3), "WEBP"),
        encode(Image.new("RGBA", (40, 30), (200, 10, 10, 90)), "PNG"),
    ]
    for data in images:
        served = classifier.decode(data)
        trained = decode_image(data, training_prep)
        assert np.array_equal(served.pixels, trained.pixels)
        assert (served.width, served.height, served.format) == (
            trained.width,
            trained.height,
            trained.format,
        )


def test_scores_are_probabilities_and_labels_follow_the_threshold(classifier, image_bytes):
    preds = classifier.classify(image_bytes)

    for pred in preds:
        assert isinstance(pred, Prediction)
        assert 0.0 <= pred.score <= 1.0
        expected = (
            classifier.labels[1] if pred.score >= classifier.threshold else classifier.labels[0]
        )
        assert pred.label == expected
        assert pred.threshold == classifier.threshold
        assert pred.model_version == classifier.version


def test_label_for_at_the_threshold(classifier):
    real, fake = classifier.labels
    t = classifier.threshold

    assert classifier.label_for(t) == fake
    assert classifier.label_for(np.nextafter(t, 0.0)) == real
    assert classifier.label_for(1.0) == fake
    if t > 0:
        assert classifier.label_for(0.0) == real


def test_batched_scores_equal_one_at_a_time(classifier, image_bytes):
    # More images than max_batch, so chunking and a short last chunk are exercised.
    items = image_bytes + image_bytes[:7]
    assert len(items) > classifier.max_batch

    batched = [p.score for p in classifier.classify(items)]
    single = [classifier.classify_one(data).score for data in items]

    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_predict_pixels_chunks_and_matches_single_rows(model_dir, classifier):
    rng = np.random.default_rng(0)
    h, w = classifier.input_size
    batch = rng.integers(0, 256, size=(7, h, w, 3), dtype=np.uint8)
    small_batches = Classifier(model_dir, num_threads=1, max_batch=3)

    scores = small_batches.predict_pixels(batch)

    assert scores.shape == (7,)
    singles = [classifier.predict_pixels(batch[i : i + 1])[0] for i in range(7)]
    np.testing.assert_allclose(scores, singles, atol=1e-5)


def test_predict_pixels_rejects_the_wrong_shape(classifier):
    with pytest.raises(ValueError, match="batch"):
        classifier.predict_pixels(np.zeros((1, 10, 10, 3), dtype=np.uint8))


def test_classify_nothing(classifier):
    assert classifier.classify([]) == []


def test_prediction_is_immutable(classifier, image_bytes):
    pred = classifier.classify_one(image_bytes[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        pred.score = 0.0  # type: ignore[misc]


# -- broken model directories --------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="model"):
        Classifier(tmp_path / "nowhere")


def test_missing_card(model_dir, tmp_path):
    (tmp_path / MODEL_FILE).write_bytes((model_dir / MODEL_FILE).read_bytes())
    with pytest.raises(ModelError, match="card"):
        Classifier(tmp_path)


def test_missing_model_file(model_dir, tmp_path):
    (tmp_path / CARD_FILE).write_text((model_dir / CARD_FILE).read_text())
    with pytest.raises(ModelError, match=MODEL_FILE):
        Classifier(tmp_path)


def test_card_that_is_not_json(model_copy):
    target = model_copy()
    (target / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="JSON"):
        Classifier(target)


def test_model_file_that_is_not_a_model(model_copy):
    target = model_copy(version=None)
    (target / MODEL_FILE).write_bytes(b"definitely not a flatbuffer" * 10)
    with pytest.raises(ModelError):
        Classifier(target)


def test_card_version_must_match_the_file(model_copy):
    with pytest.raises(ModelError, match="sha256"):
        Classifier(model_copy(version="0" * 64))


def test_card_without_version_is_accepted(model_copy, classifier):
    loaded = Classifier(model_copy(version=None), num_threads=1)
    assert loaded.version == classifier.version


def test_card_input_size_must_match_the_model(model_copy, card):
    wrong = {**card["input"], "height": card["input"]["height"] + 32}
    with pytest.raises(ModelError, match="input"):
        Classifier(model_copy(input=wrong))


def test_card_preprocessing_size_must_match_the_model(model_copy, card):
    wrong = {**card["preprocessing"], "width": card["preprocessing"]["width"] // 2}
    with pytest.raises(ModelError, match="preprocessing"):
        Classifier(model_copy(preprocessing=wrong))


@pytest.mark.parametrize(
    "changes",
    [
        {"labels": ["real"]},
        {"labels": None},
        {"threshold": None},
        {"threshold": 1.5},
        {"threshold": "0.5"},
        {"preprocessing": None},
        {"preprocessing": {"height": 256, "width": 256, "resample": "magic"}},
        {"output": "softmax"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_malformed_card(model_copy, changes):
    with pytest.raises(ModelError):
        Classifier(model_copy(**changes))


def test_extra_card_keys_are_tolerated(model_copy, classifier):
    loaded = Classifier(model_copy(notes="anything", metrics={"auc": 0.9}), num_threads=1)
    assert loaded.version == classifier.version
