"""`deepscreen adapt` on a tiny model: a new kind of fake learnt from flags.

The base model learns generated "faces" whose fakes carry a periodic grid. The new
kind of fake carries no grid but a soft pink glow somewhere: the base model
calls it real. A few dozen flagged examples must teach it, while the gate
(the retraining job's own) accepts the adapted model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sample_images import glow_fake, synthetic_face
from tiny_model import TINY

from deepscreen.cli import main
from deepscreen.config import Settings
from deepscreen.inference import Classifier
from training.adapt import read_corrections
from training.data import read_tree, split_samples
from training.gate import GateSets, gate_report
from training.hparams import load_hparams

pytestmark = pytest.mark.slow


def _write(folder: Path, images: list[Image.Image], prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        paths.append(folder / f"{prefix}{i:03d}.png")
        img.save(paths[-1])
    return paths


def _manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "source"])
        for p, label in rows:
            writer.writerow([p, label, "moderators"])
    return path


@pytest.fixture(scope="module")
def base_model(synthetic_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base")
    # A sigmoid model: from scratch at 32 px, the tiny model with a class per kind of
    # fake missed this test's bars in 2 runs of 5 (its base already caught the stamped
    # kind at 0.65 once; adapted recall 0.47 once). benchmarks/adaptation.py measures
    # the default recipe's adaptation.
    args = [a for p in (*TINY, "fake_classes=0") for a in ("--set", p)]
    assert main(["train", "--data", f"tree:{synthetic_tree}", "--out", str(out), *args]) == 0
    return out


@pytest.fixture(scope="module")
def new_kind(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Flags (40 stamped fakes + 40 reals) and held-out stamped fakes."""
    root = tmp_path_factory.mktemp("newkind")
    rng = np.random.default_rng(11)
    return {
        "flag_fakes": _write(root / "flags", [glow_fake(rng) for _ in range(40)], "fake_"),
        "flag_reals": _write(
            root / "flags", [synthetic_face(rng, fake=False) for _ in range(40)], "real_"
        ),
        "held_out": _write(root / "held", [glow_fake(rng) for _ in range(60)], "fake_"),
    }


def _recall(model: Path, paths: list[Path]) -> float:
    clf = Classifier(model)
    preds = clf.classify([p.read_bytes() for p in paths])
    return float(np.mean([p.label == "fake" for p in preds]))


def test_adapt_learns_a_new_kind_of_fake_and_passes_the_gate(
    base_model: Path,
    new_kind: dict[str, list[Path]],
    synthetic_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a base model that calls the new kind of fake real
    before = _recall(base_model, new_kind["held_out"])
    assert before <= 0.3, f"the base model already catches the new kind ({before:.2f})"
    # And moderators' flags of it, with two rows that cannot be read
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    rows = [(str(p), "fake") for p in new_kind["flag_fakes"]]
    rows += [(str(p), "real") for p in new_kind["flag_reals"]]
    rows += [(str(tmp_path / "gone.png"), "fake"), (str(broken), "fake")]
    flags = _manifest(tmp_path / "corrections.csv", rows)
    out = tmp_path / "adapted"
    # When the model is adapted from its own weights on the flags plus a replay sample
    rc = main(
        [
            "adapt", "--from", str(base_model), "--corrections", str(flags),
            "--data", f"tree:{synthetic_tree}", "--out", str(out), "--epochs", "12",
            "--set", "fine_tune_from=0", "--set", "fine_tune_learning_rate=0.002",
            # The tiny model's golden set is 1.0 ROC-AUC; at the default weight 12 the
            # 80 flags moved it to 0.947 once in three runs (gate tolerance 0.02).
            "--correction-weight", "8",
        ]
    )
    printed = capsys.readouterr().out
    # Then it ran, naming the unreadable rows, and the card records its parent and flags
    assert rc == 0, printed
    assert "gone.png" in printed and "broken.png" in printed
    card = json.loads((out / "model_card.json").read_text())
    parent = json.loads((base_model / "model_card.json").read_text())
    assert card["training"]["adapted_from"] == parent["version"]
    assert card["training"]["corrections"] == len(rows)
    assert len(card["training"]["corrections_sha256"]) == 64
    assert card["weights"]["file"] == "model.weights.h5" and (out / "model.weights.h5").is_file()
    # And it catches the new kind of fake now
    after = _recall(out, new_kind["held_out"])
    print(f"recall on the new kind: base {before:.2f}, adapted {after:.2f}")
    assert after >= 0.8, f"recall on the new kind {before:.2f} -> {after:.2f}"
    # And the retraining gate accepts it against the base model
    hp = load_hparams(None, dict(p.split("=", 1) for p in TINY))
    golden = split_samples(read_tree(synthetic_tree), hp.val_fraction, hp.seed)["valid"]
    regression = [s for s in read_corrections(flags) if s.path.exists() and s.path != broken]
    report = gate_report(
        candidate_dir=out,
        active_dir=base_model,
        sets=GateSets(golden, "tiny validation split", regression),
        settings=Settings(),
        min_auc=0.9,
    )
    print("gate:", json.dumps(report["criteria"]))
    assert report["passed"], report["reasons"]
    assert report["decided_by"] == "fixes-corrections"


def test_adapt_refuses_a_model_without_weights(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.tflite", "model_card.json"):
        (bare / name).write_bytes((base_model / name).read_bytes())
    flags = _manifest(tmp_path / "c.csv", [(str(tmp_path / "x.png"), "fake")])
    rc = main(["adapt", "--from", str(bare), "--corrections", str(flags), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "has no Keras weights" in capsys.readouterr().err


def _parent(base_model: Path) -> Any:
    from training.adapt import parent_hparams
    from training.model import build_model

    hp = parent_hparams(json.loads((base_model / "model_card.json").read_text()))
    model = build_model(hp, weights="none")
    model.load_weights(base_model / "model.weights.h5")
    return model


def test_interpolating_with_no_share_of_the_adapted_weights_gives_the_parent_back(
    base_model: Path, new_kind: dict[str, list[Path]], synthetic_tree: Path, tmp_path: Path
) -> None:
    from training.adapt import AdaptOptions, train_adapted
    from training.train import predict

    rows = [(str(p), "fake") for p in new_kind["flag_fakes"][:10]]
    rows += [(str(p), "real") for p in new_kind["flag_reals"][:10]]
    fixes = read_corrections(_manifest(tmp_path / "c.csv", rows))
    parent = _parent(base_model)
    # Two quick epochs may leave the adapted model under the tiny recipe's quality
    # gate (seen once: 0.864 < 0.9); the weights, not the gate, are under test here.
    overrides = {"fine_tune_from": 0, "fine_tune_learning_rate": 0.002, "min_val_auc": 0.0}
    runs = {}
    for share in (1.0, 0.0):
        opts = AdaptOptions(epochs=2, interpolate=share, replay_min=60)
        result, _, _ = train_adapted(
            base_model,
            fixes,
            read_tree(synthetic_tree),
            tmp_path / f"w{share}",
            opts=opts,
            overrides=overrides,
        )
        runs[share] = result
    # The adapted weights moved, and with share 0 the parent's weights (and scores) are back
    pixels = runs[0.0].valid.pixels
    assert np.max(np.abs(predict(runs[1.0].model, pixels) - predict(parent, pixels))) > 1e-3
    for got, want in zip(runs[0.0].model.get_weights(), parent.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(runs[0.0].val_scores, predict(parent, pixels), atol=1e-5)


def test_adapt_refuses_an_interpolation_share_outside_0_to_1(
    base_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = _manifest(tmp_path / "c.csv", [(str(tmp_path / "x.png"), "fake")])
    args = ["adapt", "--from", str(base_model), "--corrections", str(flags)]
    rc = main([*args, "--out", str(tmp_path / "o"), "--interpolate", "1.5"])
    assert rc == 2
    assert "--interpolate must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
