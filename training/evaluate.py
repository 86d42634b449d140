"""Metrics, the operating threshold, plots and the Markdown report.

Everything here works on plain arrays of scores, so it evaluates Keras and TFLite
outputs alike and needs no TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from training.data import LABELS, Sample


def threshold_at_fpr(
    scores: np.ndarray, labels: np.ndarray, target_fpr: float, margin: float = 1e-3
) -> float:
    """A threshold whose false-positive rate on real images is <= target_fpr.

    A score >= threshold means "fake". The threshold sits in the middle of the first
    gap above the highest real score that must stay below it that is wide enough
    (`_threshold_above`: ``2 * margin`` at a score of 0.5, measured in logits, so the
    same relative room near 0 and 1), so small numeric differences (Keras vs TFLite,
    float16, which move the logit and so the score by less where the sigmoid is flat)
    do not flip labels at the boundary (measured: up to 0.00006 on the shipped model,
    0.0004 on the tests' tiny float16 model). Saturated scores (a cluster within
    float32 steps of 1.0) are skipped over: the threshold then rises above them, which
    only lowers the false-positive rate, and may exceed 1.0 (nothing is called fake).
    """
    real = np.sort(scores[labels == 0])
    if len(real) == 0:
        return 0.5
    allowed = int(np.floor(target_fpr * len(real)))  # reals that may score >= threshold
    if allowed >= len(real):
        return float(np.min(scores)) - margin  # every image is called fake
    return _threshold_above(float(real[len(real) - 1 - allowed]), scores, margin)


#: Scores closer than this are one value to a float32 model: no threshold between them.
_SAME_SCORE = 1e-6


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return float(np.log(p / (1.0 - p)))


def _threshold_above(lower: float, scores: np.ndarray, margin: float) -> float:
    """The midpoint, in logits, of the first gap above ``lower`` between ``scores`` at
    least ``8 * margin`` logits wide (``2 * margin`` in score at 0.5): a confident model's
    scores crowd towards 1.0 far closer than ``margin`` and yet are as far apart in logits
    as in the middle, so the threshold stays next to ``lower`` instead of climbing the
    crowd to 1.0. ``lower + margin`` (maybe above 1.0) when no gap is wide enough."""
    for upper in np.unique(scores[scores > lower]).astype(float):
        lo, hi = _logit(lower), _logit(upper)
        if upper - lower >= _SAME_SCORE and hi - lo >= 8 * margin:
            return float(1.0 / (1.0 + np.exp(-(lo + hi) / 2)))
        lower = upper
    return lower + margin


#: What the real images of each known source are, for the card's per-source rates.
REAL_SOURCE_NAMES = {
    "ffhq-stylegan": "FFHQ (Flickr)",
    "ciplab": "ciplab photos",
    "hardfakevsreal": "Unsplash",
    "pixabay": "Pixabay stock",
}
#: What the fakes of each known source are (the leave-one-generator-out families).
FAKE_FAMILY_NAMES = {
    "ciplab": "Photoshop composites (ciplab)",
    "ffhq-stylegan": "StyleGAN",
    "hardfakevsreal": "StyleGAN2",
    "sdfd": "Stable Diffusion 2.1",
    "sd3": "Stable Diffusion 3",
}


#: Least reals a source needs for the per-source false-positive bound to apply.
MIN_REALS_PER_SOURCE = 20


def threshold_for_sources(
    scores: np.ndarray,
    labels: np.ndarray,
    sources: Sequence[str],
    target_fpr: float,
    tolerance: float = 0.02,
    margin: float = 1e-3,
) -> float:
    """A threshold whose false-positive rate, pooled over the real sources with each
    source weighted equally, is <= ``target_fpr``, and on no single real source above
    ``target_fpr + tolerance`` (sources of at least `MIN_REALS_PER_SOURCE` reals).

    Pooling by count would let the largest real source set the threshold and a small
    one (large stock photos, say) be flagged far more often than the card says. The
    threshold keeps the same room from every score as `threshold_at_fpr`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    src = np.asarray(list(sources))
    real_sources = sorted(set(src[labels == 0].tolist()))
    if not real_sources:
        return 0.5
    per_source = [np.sort(scores[(labels == 0) & (src == name)]) for name in real_sources]
    # A source with fewer reals than MIN_REALS_PER_SOURCE cannot show a rate near the
    # target (one image is more than 5 % of it) and would, weighted like the large
    # ones, decide the threshold alone: it is left out of the rule (and still reported
    # by `fpr_per_real_source`). With no source that large, all reals pool by count.
    measured = [r for r in per_source if len(r) >= MIN_REALS_PER_SOURCE]
    if not measured:
        measured = [np.sort(scores[labels == 0])]
    lower = None
    for candidate in np.unique(np.concatenate(measured)):
        # Threshold just above ``candidate``: reals scoring above it are flagged.
        fprs = [float(np.mean(r > candidate)) for r in measured]
        if np.mean(fprs) <= target_fpr and max(fprs) <= target_fpr + tolerance:
            lower = float(candidate)
            break
    if lower is None:
        return 1.0
    # Saturated scores: a threshold above every score would call nothing fake; the card
    # keeps thresholds within [0, 1].
    return min(1.0, _threshold_above(lower, scores, margin))


def fpr_per_real_source(
    scores: np.ndarray, labels: np.ndarray, sources: Sequence[str], threshold: float
) -> dict[str, dict[str, Any]]:
    """False-positive rate at ``threshold`` on the reals of each source."""
    scores, labels, src = np.asarray(scores), np.asarray(labels), np.asarray(list(sources))
    out = {}
    for name in sorted(set(src[labels == 0].tolist())):
        real = scores[(labels == 0) & (src == name)]
        out[name] = {
            "what": REAL_SOURCE_NAMES.get(name, name),
            "n": len(real),
            "fpr": float(np.mean(real >= threshold)),
        }
    return out


@dataclass
class ServedScores:
    """Image-level scores of a model through the serving class (the face stage and
    its best-face rule included); images with no face or unreadable are set apart."""

    samples: list[Sample]
    scores: np.ndarray
    #: (path, reason) of images with no verdict: no face, or unreadable.
    failed: list[tuple[Path, str]]
    no_face: list[Sample]

    def no_face_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.no_face:
            key = f"{s.source}/{LABELS[s.label]}"
            counts[key] = counts.get(key, 0) + 1
        return counts


def score_through_serving(clf: Any, samples: Sequence[Sample], chunk: int = 64) -> ServedScores:
    """Score local ``samples`` with ``clf`` (a `deepscreen.inference.Classifier`) on
    their encoded bytes, exactly as a worker would."""
    from deepscreen.inference import NO_FACE

    kept, scores, failed, no_face = [], [], [], []
    for start in range(0, len(samples), chunk):
        part = list(samples[start : start + chunk])
        blobs = []
        for s in part:
            try:
                blobs.append(s.path.read_bytes())
            except OSError as exc:
                blobs.append(b"")
                failed.append((s.path, str(exc)))
        for sample, data, result in zip(part, blobs, clf.classify(blobs), strict=True):
            if not data:
                continue
            if isinstance(result, Exception):
                failed.append((sample.path, str(result)))
            elif result.label == NO_FACE:
                no_face.append(sample)
                failed.append((sample.path, result.reason or NO_FACE))
            else:
                kept.append(sample)
                scores.append(result.score)
    return ServedScores(kept, np.array(scores, dtype=np.float64), failed, no_face)


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, FPR, ROC-AUC and the confusion matrix at ``threshold``."""
    pred = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel().tolist()
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    both = len(set(labels.tolist())) == 2
    return {
        "n": n,
        "threshold": round(float(threshold), 6),
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "roc_auc": float(roc_auc_score(labels, scores)) if both else None,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


@dataclass
class Evaluation:
    """Metrics of one model on one labelled set, overall and per group."""

    threshold: float
    overall: dict[str, dict[str, Any]]  # {"operating": ..., "half": ...}
    per_source: dict[str, dict[str, dict[str, Any]]]
    per_difficulty: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "overall": self.overall,
            "per_source": self.per_source,
            "per_ciplab_difficulty": self.per_difficulty,
        }


def evaluate_scores(
    scores: np.ndarray, samples: Sequence[Sample], threshold: float
) -> Evaluation:
    """Metrics at the operating threshold and at 0.5, overall, per source and per
    ciplab difficulty (each fake grade measured against all of its source's reals)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])

    def both(mask: np.ndarray) -> dict[str, dict[str, Any]]:
        return {
            "operating": binary_metrics(scores[mask], labels[mask], threshold),
            "half": binary_metrics(scores[mask], labels[mask], 0.5),
        }

    everything = np.ones(len(samples), bool)
    per_source = {src: both(sources == src) for src in sorted(set(sources.tolist()))}
    per_difficulty = {}
    for grade in ("easy", "mid", "hard"):
        fakes = np.array([s.difficulty == grade for s in samples])
        if fakes.any():
            src = samples[int(np.argmax(fakes))].source
            mask = fakes | ((sources == src) & (labels == 0))
            per_difficulty[grade] = both(mask)
    return Evaluation(threshold, both(everything), per_source, per_difficulty)


def cell_text_colour(rgba: Sequence[float]) -> str:
    """Black on a light cell, white on a dark one (relative luminance below 0.4)."""
    r, g, b = (float(c) for c in rgba[:3])
    return "white" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.4 else "black"


def write_plots(scores: np.ndarray, samples: Sequence[Sample], threshold: float, out: Path) -> list[str]:
    """ROC curves (overall and per source) and the confusion matrix as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.array([s.label for s in samples])
    sources = np.array([s.source for s in samples])
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, mask in [("all", np.ones(len(labels), bool))] + [
        (src, sources == src) for src in sorted(set(sources.tolist()))
    ]:
        if len(set(labels[mask].tolist())) == 2:
            fpr, tpr, _ = roc_curve(labels[mask], scores[mask])
            auc = roc_auc_score(labels[mask], scores[mask])
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set(xlabel="false-positive rate (real flagged)", ylabel="true-positive rate", title="ROC, validation")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)

    cm = confusion_matrix(labels, (scores >= threshold).astype(int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 4))
    cells = ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        colour = cell_text_colour(cells.cmap(cells.norm(v)))
        ax.text(j, i, str(v), ha="center", va="center", color=colour, fontsize=14)
    ax.set_xticks([0, 1], [f"pred {LABELS[0]}", f"pred {LABELS[1]}"])
    ax.set_yticks([0, 1], [f"true {LABELS[0]}", f"true {LABELS[1]}"])
    ax.set_title(f"Confusion at threshold {threshold:.3f}")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=100)
    plt.close(fig)
    return ["roc.png", "confusion.png"]


def _row(name: str, m: dict[str, Any]) -> str:
    auc = "n/a" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
    return (f"| {name} | {m['n']} | {auc} | {m['accuracy']:.3f} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {m['f1']:.3f} | {m['fpr']:.3f} |")


def markdown_report(ev: Evaluation, title: str, extra: dict[str, Any] | None = None) -> str:
    """The human-readable report stored beside the model."""
    head = "| set | n | ROC-AUC | accuracy | precision | recall | F1 | FPR |\n|---|---|---|---|---|---|---|---|"
    lines = [f"# {title}", ""]
    for key, caption in (("operating", f"at the operating threshold {ev.threshold:.4f}"),
                         ("half", "at threshold 0.5")):
        lines += [f"## Validation metrics {caption}", "", head, _row("all", ev.overall[key])]
        lines += [_row(src, m[key]) for src, m in ev.per_source.items()]
        lines += [_row(f"ciplab {g} fakes vs reals", m[key]) for g, m in ev.per_difficulty.items()]
        lines.append("")
    c = ev.overall["operating"]["confusion"]
    lines += ["## Confusion matrix (operating threshold)", "",
              "| | predicted real | predicted fake |", "|---|---|---|",
              f"| real | {c['tn']} | {c['fp']} |", f"| fake | {c['fn']} | {c['tp']} |", "",
              "![ROC](roc.png) ![confusion](confusion.png)", ""]
    if extra:
        lines += ["## Run", "", "```json", json.dumps(extra, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)
