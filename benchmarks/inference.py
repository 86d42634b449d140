"""Throughput of the serving class, decode included, against the seed's Keras per-image serving.

Run from the repository root::

    python benchmarks/inference.py [--model DIR] [--n 400] [--seconds 10]

Prints images/s of `deepscreen.inference.Classifier` (bytes -> Prediction, the face
stage included when the model's card has one) at 1 and 2 classifier threads, batch 1
and 16, on (a) the shared 256px face images and (b) generated
1024x1024 JPEGs; then Keras ``model.predict`` one image at a time on the same
256px images, and the ratio between the two. Project targets: >= 100 images/s
at 2 threads on 256px images with decode, and >= 10x the Keras per-image rate.

A script, not a test: numbers depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import SHARED_DATA, load_average, load_shared
from PIL import Image

from deepscreen.imaging import decode_image
from deepscreen.inference import CARD_FILE, Classifier, default_model_dir

TARGET_RATE = 100.0
TARGET_RATIO = 10.0


@dataclass(frozen=True)
class Result:
    """One measured configuration."""

    what: str
    threads: str
    batch: str
    images: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every measurement and print the table; returns the exit status."""
    args = parse_args(argv)
    model_dir = Path(args.model) if args.model else default_model_dir()
    print(f"model: {model_dir}  cpus: {os.cpu_count()}  load average: {load_average()}")
    shared = load_shared(args.n)
    big = make_big_jpegs(args.big)
    print(
        f"images: {len(shared)} shared 256px "
        + ("" if shared else f"(none: {SHARED_DATA / 'MANIFEST.csv'} not found) ")
        + f"| {len(big)} generated 1024x1024 JPEG q90"
    )

    results: list[Result] = []
    datasets = [("256px shared", shared), ("1024px JPEG", big)]
    for name, items in datasets:
        if not items:
            print(f"skipping {name}: no images")
            continue
        results.append(measure_decode_only(model_dir, name, items, args.seconds))
        for threads in (1, 2):
            for batch in (1, 16):
                results.append(measure_litert(model_dir, name, items, threads, batch, args.seconds))

    keras_result: Result | None = None
    if shared and not args.no_keras:
        keras_result = measure_keras(model_dir, shared, args.seconds, args.keras_n, args.alpha)
        results.append(keras_result)

    print_table(results)
    report_targets(results, keras_result)
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", metavar="DIR", help="model directory (default: bundled)")
    parser.add_argument("--n", type=int, default=400, help="shared 256px images (default 400)")
    parser.add_argument("--big", type=int, default=64, help="generated 1024px JPEGs (default 64)")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="time budget per measurement (default 10)"
    )
    parser.add_argument(
        "--keras-n", type=int, default=100, help="images for the Keras baseline (default 100)"
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="MobileNetV2 width of the Keras baseline, to match the served model "
        "(default: the card's hyperparameters, else HParams())",
    )
    parser.add_argument("--no-keras", action="store_true", help="skip the Keras baseline")
    return parser.parse_args(argv)


def make_big_jpegs(n: int, side: int = 1024) -> list[bytes]:
    """``n`` random smooth-noise JPEGs (quality 90), with a little grain like a photo."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC))
        grain = rng.normal(0, 4, size=smooth.shape)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def timed(
    items: Sequence[Any], step: int, run: Callable[[Sequence[Any]], Any], budget: float
) -> tuple[int, float]:
    """Run ``run`` on consecutive chunks of ``items`` until done or over ``budget`` seconds."""
    done = 0
    start = time.perf_counter()
    while done < len(items):
        chunk = items[done : done + step]
        run(chunk)
        done += len(chunk)
        if time.perf_counter() - start > budget:
            break
    return done, time.perf_counter() - start


def measure_litert(
    model_dir: Path, name: str, items: list[bytes], threads: int, batch: int, budget: float
) -> Result:
    """bytes -> Prediction through the serving class, ``batch`` images per call."""
    clf = Classifier(model_dir, num_threads=threads, max_batch=batch)
    if batch == 1:

        def run(chunk: Sequence[bytes]) -> None:
            clf.classify_one(chunk[0])
    else:

        def run(chunk: Sequence[bytes]) -> None:
            clf.classify(chunk)

    run(items[:batch])  # warm up: first invoke and tensor allocation
    done, seconds = timed(items, batch, run, budget)
    return Result(f"LiteRT {name}", str(threads), str(batch), done, seconds)


def measure_decode_only(model_dir: Path, name: str, items: list[bytes], budget: float) -> Result:
    """Decoding and cutting the inputs alone (the face stage included when the card has
    one), to show how much of the time is not the classifier's inference."""
    clf = Classifier(model_dir, num_threads=1)
    done, seconds = timed(items, 1, lambda chunk: clf.prepare(chunk[0]), budget)
    what = "decode + face stage" if clf.face_stage is not None else "decode only"
    return Result(f"{what} {name}", "1", "-", done, seconds)


def measure_keras(
    model_dir: Path, items: list[bytes], budget: float, limit: int, alpha: float | None
) -> Result:
    """The seed's way of serving: decode, then ``model.predict`` on one image at a time."""
    card = json.loads((model_dir / CARD_FILE).read_text())
    model, how = build_keras_model(card, alpha)
    print(f"keras baseline: {how}")
    clf = Classifier(model_dir, num_threads=1)
    prep = clf.preprocessing

    def run(chunk: Sequence[bytes]) -> None:
        pixels = decode_image(chunk[0], prep).pixels
        model.predict(pixels[np.newaxis].astype(np.float32), verbose=0)

    run(items[:1])  # warm up: graph tracing
    done, seconds = timed(items[:limit], 1, run, budget)
    return Result("Keras predict 256px shared", "tf", "1", done, seconds)


def build_keras_model(card: dict[str, Any], alpha: float | None) -> tuple[Any, str]:
    """training.model.build_model when importable, else an equivalent MobileNetV2.

    Weights are random: speed does not depend on them. The width (alpha) should
    match the served model's for a fair ratio; it is printed.
    """
    height, width = card["input"]["height"], card["input"]["width"]
    try:
        from training.hparams import HParams
        from training.model import build_model
    except ImportError as exc:
        fallback_alpha = 1.0 if alpha is None else alpha
        return (
            _fallback_model(height, width, fallback_alpha),
            f"fallback MobileNetV2 alpha={fallback_alpha} ({exc})",
        )
    known = {f.name for f in dataclasses.fields(HParams)}
    # training/export.py records the run's HParams in the card as "hyperparameters".
    recorded = card.get("hyperparameters") or {}
    overrides = {k: v for k, v in recorded.items() if k in known}
    overrides["image_size"] = height
    if alpha is not None:
        overrides["alpha"] = alpha
    hp = dataclasses.replace(HParams(), **overrides)
    source = "card hyperparameters" if recorded else "HParams() defaults"
    if alpha is not None:
        source += ", --alpha"
    return (
        build_model(hp, weights="none"),
        f"training.model.build_model ({source}: alpha={hp.alpha}, image_size={hp.image_size})",
    )


def _fallback_model(height: int, width: int, alpha: float) -> Any:
    import keras

    inputs = keras.Input((height, width, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.applications.MobileNetV2(
        input_shape=(height, width, 3), alpha=alpha, include_top=False, weights=None, pooling="avg"
    )(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


def print_table(results: list[Result]) -> None:
    header = ("what", "threads", "batch", "images", "seconds", "images/s")
    rows = [
        (r.what, r.threads, r.batch, str(r.images), f"{r.seconds:.2f}", f"{r.rate:.1f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
        )


def report_targets(results: list[Result], keras_result: Result | None) -> None:
    best = max(
        (r for r in results if r.what == "LiteRT 256px shared" and r.threads == "2"),
        key=lambda r: r.rate,
        default=None,
    )
    print()
    if best is None:
        print("targets: not measured (no shared 256px images)")
        return
    ok = "PASS" if best.rate >= TARGET_RATE else "FAIL"
    print(
        f"best LiteRT, 2 threads, 256px with decode: {best.rate:.1f} images/s "
        f"(batch {best.batch}); target >= {TARGET_RATE:.0f}: {ok}"
    )
    if keras_result is not None:
        ratio = best.rate / keras_result.rate
        ok = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        print(
            f"ratio to Keras per-image predict ({keras_result.rate:.1f} images/s): "
            f"{ratio:.1f}x; target >= {TARGET_RATIO:.0f}x: {ok}"
        )


if __name__ == "__main__":
    sys.exit(main())
