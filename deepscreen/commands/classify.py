"""`deepscreen classify PATH...`: score image files and folders from the command line.

Folders are walked for image files by extension; files named explicitly are
always tried. Unreadable or undecodable images are listed with their reason and
do not change the exit status: only usage errors (a missing path, a bad model
directory) do. With a model that has a face stage, the table has the number of faces
found, and an image without a face gets the label ``no_face`` with its reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from deepscreen.errors import ImageError, ModelError, OversizedImage

if TYPE_CHECKING:
    from deepscreen.inference import Classifier

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

#: Exit status for usage errors, as argparse uses.
USAGE_ERROR = 2


@dataclass(frozen=True)
class Row:
    """One classified (or failed) file."""

    path: str
    score: float | None
    label: str | None
    model_version: str | None
    error: str | None
    #: Faces found ({x0, y0, x1, y1, confidence, score}); None without a face stage.
    faces: list[dict[str, Any]] | None = None
    #: Why a decoded image got no score (label ``no_face``).
    reason: str | None = None


def register(subparsers: Any) -> None:
    """Add the ``classify`` subcommand to the ``deepscreen`` script."""
    parser = subparsers.add_parser(
        "classify",
        help="classify image files or folders as real or fake",
        description="Classify image files or folders (searched for "
        + ", ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
        + " files) with a LiteRT model.",
    )
    parser.add_argument("paths", nargs="+", type=_existing_path, metavar="PATH")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="DIR",
        help="model directory with model.tflite and model_card.json (default: the bundled model)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="LiteRT threads (default: one per CPU)",
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=16,
        metavar="N",
        help="images per inference batch (default: 16)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--recursive",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="search folders recursively (default: yes)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Classify ``args.paths`` and print the results; returns the exit status."""
    # Imported here so that `deepscreen --help` does not load LiteRT.
    from deepscreen.inference import NO_FACE, Classifier

    try:
        # LiteRT's own default is a single thread; a command-line run may use the machine.
        threads = args.threads or os.cpu_count() or 1
        classifier = Classifier(args.model, num_threads=threads, max_batch=args.batch)
    except ModelError as exc:
        print(f"deepscreen classify: error: {exc}", file=sys.stderr)
        return USAGE_ERROR

    files = list(iter_images(args.paths, recursive=args.recursive))
    show_progress = any(p.is_dir() for p in args.paths) and (not args.json or sys.stderr.isatty())
    rows: list[Row] = []
    with _progress(len(files), enabled=show_progress) as bar:
        for chunk in _chunks(files, args.batch):
            rows.extend(classify_files(classifier, chunk))
            bar.update(len(chunk))

    if args.json:
        json.dump([row.__dict__ for row in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        faces = classifier.face_stage is not None
        print_table(rows, sys.stdout, faces=faces)
        print(summary(rows, [*classifier.labels, *([NO_FACE] if faces else [])]))
    return 0


def iter_images(paths: Iterable[Path], *, recursive: bool) -> Iterator[Path]:
    """Files named explicitly, then image files found in folders, sorted per folder;
    each file once, however often it is named (as given the first time)."""
    seen: set[Path] = set()
    for path in _named_or_found(paths, recursive=recursive):
        real = path.resolve()
        if real not in seen:
            seen.add(real)
            yield path


def _named_or_found(paths: Iterable[Path], *, recursive: bool) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            yield from sorted(
                p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
        else:
            yield path


def classify_files(classifier: Classifier, files: list[Path]) -> list[Row]:
    """Read and classify one batch of files; read errors become failed rows."""
    rows: list[Row | None] = [None] * len(files)
    readable: list[int] = []
    blobs: list[bytes] = []
    for i, path in enumerate(files):
        try:
            size = path.stat().st_size
            if size > classifier.max_bytes:
                # Refused without reading it into memory.
                too_big = OversizedImage(
                    f"{size} bytes is over the limit of {classifier.max_bytes}"
                )
                rows[i] = Row(str(path), None, None, None, f"{too_big.code}: {too_big}")
                continue
            blobs.append(_read_limited(path, classifier.max_bytes))
            readable.append(i)
        except OSError as exc:
            rows[i] = Row(str(path), None, None, None, f"unreadable: {exc.strerror or exc}")
    for i, result in zip(readable, classifier.classify(blobs), strict=True):
        if isinstance(result, ImageError):
            rows[i] = Row(str(files[i]), None, None, None, f"{result.code}: {result}")
        else:
            rows[i] = Row(
                str(files[i]),
                None if result.score is None else round(result.score, 6),
                result.label,
                result.model_version,
                None,
                faces=None
                if classifier.face_stage is None
                else [face.to_json() for face in result.faces],
                reason=result.reason,
            )
    return [row for row in rows if row is not None]


def print_table(rows: list[Row], out: TextIO, *, faces: bool = False) -> None:
    """An aligned table: file, score, label, the number of faces (``faces``: the model
    has a face stage) and, when anything failed or had no face, the reason."""
    header = ["file", "score", "label"]
    if faces:
        header.append("faces")
    has_reasons = any(row.error or row.reason for row in rows)
    if has_reasons:
        header.append("reason")
    table = [header]
    for row in rows:
        cells = [
            row.path,
            f"{row.score:.4f}" if row.score is not None else "-",
            row.label or "-",
        ]
        if faces:
            cells.append("-" if row.faces is None else str(len(row.faces)))
        if has_reasons:
            cells.append(row.error or row.reason or "")
        table.append(cells)
    numeric = {1, 3} if faces else {1}
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    for cells in table:
        line = "  ".join(
            cell.rjust(w) if c in numeric else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        out.write(line.rstrip() + "\n")


def summary(rows: list[Row], labels: list[str]) -> str:
    """E.g. ``3 images: 1 real, 1 fake, 1 failed`` (``labels`` may include ``no_face``)."""
    counts = Counter(row.label for row in rows if row.label is not None)
    failed = sum(1 for row in rows if row.error)
    parts = [f"{counts.get(label, 0)} {label}" for label in labels]
    parts.append(f"{failed} failed")
    noun = "image" if len(rows) == 1 else "images"
    return f"{len(rows)} {noun}: " + ", ".join(parts)


def _read_limited(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, at most one past the limit in case it grew (decode then refuses it)."""
    with path.open("rb") as fh:
        return fh.read(max_bytes + 1)


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _progress(total: int, *, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, unit="img", file=sys.stderr, leave=False)


def _existing_path(value: str) -> Path:
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {value}")
    return path


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return number
