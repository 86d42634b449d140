"""Stochastic weight averaging over the schedule's tail (``average_last_epochs``)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from tiny_model import TINY

from training.data import read_tree
from training.hparams import HParams, load_hparams
from training.model import family_head
from training.train import TailAverage, train_samples


class _Snapshots(keras.callbacks.Callback):
    """Every epoch's weights, as the epoch ends."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.weights.append(self.model.get_weights())


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


def _fit(epochs: int, *callbacks: keras.callbacks.Callback) -> keras.Model:
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.BatchNormalization()(keras.layers.Dense(3)(inp))
    ))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="binary_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=16, callbacks=list(callbacks), verbose=0)
    return model


def test_the_tail_average_is_the_mean_of_the_last_epochs_weights() -> None:
    seen, tail = _Snapshots(), TailAverage(2, 4)
    model = _fit(4, seen, tail)
    assert tail.applied
    # Batch-norm statistics (non-trainable) are averaged with the rest.
    for got, a, b in zip(model.get_weights(), seen.weights[2], seen.weights[3], strict=True):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-6)
    for kept, last in zip(tail.kept, seen.weights[3], strict=True):
        np.testing.assert_array_equal(kept, last)
    assert not np.allclose(seen.weights[2][0], seen.weights[3][0])  # the epochs differed


def test_a_phase_stopped_inside_the_tail_averages_the_tails_epochs_that_ran() -> None:
    seen, tail = _Snapshots(), TailAverage(3, 5)
    model = _fit(5, seen, _StopAfter(4), tail)  # epochs 3 and 4 of the tail ran
    assert tail.applied and len(seen.weights) == 4
    for got, a, b in zip(model.get_weights(), seen.weights[2], seen.weights[3], strict=True):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-6)


def test_a_phase_stopped_before_two_tail_epochs_keeps_its_own_weights() -> None:
    seen, tail = _Snapshots(), TailAverage(2, 4)
    model = _fit(4, seen, _StopAfter(3), tail)  # one epoch of the tail ran
    assert not tail.applied and tail.kept is None
    for got, last in zip(model.get_weights(), seen.weights[-1], strict=True):
        np.testing.assert_array_equal(got, last)


def test_average_last_epochs_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="average_last_epochs"):
        HParams(average_last_epochs=-1)


@pytest.mark.slow
def test_training_reports_both_the_averaged_and_the_unaveraged_model(
    synthetic_tree: Path, tmp_path: Path
) -> None:
    overrides = dict(p.split("=", 1) for p in TINY)
    # No quality gate: what is tested is the reporting, and an average over a tiny
    # model's first, unsettled epochs can score below chance (it did on CI's machine).
    overrides.update(fine_tune_epochs="4", average_last_epochs="3", min_val_auc="0")
    hp = load_hparams(None, overrides)
    result = train_samples(read_tree(synthetic_tree), hp, tmp_path)
    assert result.unaveraged_weights is not None
    assert result.history["averaged_val_auc"] == [pytest.approx(result.val_auc)]
    # The unaveraged model is early stopping's best epoch: its ROC-AUC is that epoch's
    # (Keras' AUC interpolates over 200 thresholds, hence the tolerance).
    best = max(result.history["fine_val_auc"])
    assert result.history["unaveraged_val_auc"][0] == pytest.approx(best, abs=0.02)
    # The returned model carries the average, not the weights early stopping kept
    # (the weights of what was fitted: the softmax over real and each kind of fake).
    fitted = family_head(result.model).get_weights()
    differs = [
        not np.allclose(w, u) for w, u in zip(fitted, result.unaveraged_weights, strict=True)
    ]
    assert any(differs)
