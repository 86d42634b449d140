"""The summary ``deepscreen run`` prints: counts, a per-image table and where results are."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TextIO

from sqlalchemy.engine import make_url

from deepscreen.commands.ingest import IngestSummary
from deepscreen.config import Settings
from deepscreen.db.models import Image, ImageStatus, Prediction

Row = tuple[Image, Prediction | None]


def print_report(
    rows: Sequence[Row],
    summary: IngestSummary,
    settings: Settings,
    *,
    labels: Sequence[str] = (),
    out: TextIO,
    max_rows: int = 50,
) -> None:
    """Counts by label and failure reason; every image when there are at most
    ``max_rows`` of them, else the failed ones only; then the database location."""
    out.write(f"{summary}\n")
    if not rows:
        out.write("no images found\n")
        out.write(f"results: {results_location(settings)}\n")
        return
    shown = list(rows)
    if len(rows) > max_rows:
        shown = [row for row in rows if row[0].status is ImageStatus.FAILED][:max_rows]
    if shown:
        out.write("\n")
        print_table(shown, out)
    hidden = len(rows) - len(shown)
    if hidden:
        out.write(f"({hidden} more images not listed; --max-rows {len(rows)} lists them)\n")
    out.write("\n" + counts_line(rows, labels) + "\n")
    reasons = Counter(
        (image.failure_reason or "unknown").split(":", 1)[0]
        for image, _ in rows
        if image.status is ImageStatus.FAILED
    )
    if reasons:
        out.write("failed: " + ", ".join(f"{n} {code}" for code, n in reasons.most_common()) + "\n")
    out.write(f"results: {results_location(settings)} (tables images, predictions)\n")


def print_table(rows: Sequence[Row], out: TextIO) -> None:
    """An aligned table: file, status, score, label and, for failures and images with
    no face, the reason."""
    table = [["file", "status", "score", "label", "faces", "reason"]]
    for image, prediction in rows:
        table.append(
            [
                image.key,
                image.status.value,
                _score(prediction),
                prediction.label if prediction is not None else "-",
                _faces(prediction),
                image.failure_reason or (prediction and prediction.reason) or "",
            ]
        )
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    for cells in table:
        line = "  ".join(
            cell.rjust(w) if c in (2, 4) else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        out.write(line.rstrip() + "\n")


def _score(prediction: Prediction | None) -> str:
    if prediction is None or prediction.score is None:
        return "-"
    return f"{prediction.score:.4f}"


def _faces(prediction: Prediction | None) -> str:
    """How many faces the model's face stage found; ``-`` without a face stage."""
    if prediction is None or prediction.faces is None:
        return "-"
    return str(len(prediction.faces))


def counts_line(rows: Sequence[Row], labels: Sequence[str] = ()) -> str:
    """E.g. ``14 images: 12 done (7 real, 5 fake), 2 failed, 0 pending``."""
    status = Counter(image.status for image, _ in rows)
    by_label = Counter(p.label for image, p in rows if p is not None)
    order = list(labels) + sorted(set(by_label) - set(labels))
    labelled = ", ".join(f"{by_label[label]} {label}" for label in order)
    done = f"{status[ImageStatus.DONE]} done" + (f" ({labelled})" if labelled else "")
    parts = [done, f"{status[ImageStatus.FAILED]} failed"]
    pending = status[ImageStatus.QUEUED] + status[ImageStatus.PROCESSING]
    if pending:
        parts.append(f"{pending} not finished")
    noun = "image" if len(rows) == 1 else "images"
    return f"{len(rows)} {noun}: " + ", ".join(parts)


def results_location(settings: Settings) -> str:
    """The SQLite file, or the database URL without its password."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        return url.database
    return url.render_as_string(hide_password=True)
