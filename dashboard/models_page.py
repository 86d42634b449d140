"""The models page: every model version with its card, metrics and plots, its lifecycle
status (candidate, active, retired; in shadow), the retraining gate's report and, for a
version that is not the active one, how it agrees with the active model and with the
moderators. Admins change which version serves through `dashboard.model_lifecycle`.

The card is read from the database row (``model_versions.card``) and the plots from
the model's folder on disk (``model_versions.location`` is that folder or the
``.tflite`` in it). The dashboard never loads a model: no LiteRT here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, render_template, send_from_directory
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from dashboard import charts, db
from dashboard.agreement import Agreement, agreement
from dashboard.auth import login_required
from dashboard.model_lifecycle import HOT_RELOAD
from deepscreen.db.models import ModelVersion, Prediction
from deepscreen.db.retraining import TrainingRun

bp = Blueprint("models_page", __name__, url_prefix="/models")

#: The artefacts served, by suffix, and only when the card lists them by name.
ARTEFACT_TYPES = {".png": "image/png", ".md": "text/plain; charset=utf-8"}
#: What a card without an ``artefacts`` list may serve.
DEFAULT_ARTEFACTS = ("roc.png", "confusion.png", "report.md")
#: A report larger than this is linked, not shown inline.
REPORT_INLINE_BYTES = 200_000
#: The metrics of a metrics table, in column order.
METRIC_COLUMNS = ("n", "threshold", "roc_auc", "accuracy", "precision", "recall", "f1", "fpr")
CONFUSION_COLUMNS = ("tn", "fp", "fn", "tp")


@dataclass(frozen=True)
class MetricTable:
    """One table of a card's metrics: rows of (subset, operating point, metrics)."""

    title: str
    rows: list[tuple[str, str, Mapping[str, Any]]] = field(default_factory=list)


@bp.get("/")
@login_required()
def index() -> str:
    """Every model version, newest first, with its headline metrics."""
    dbs = db.session()
    models = list(dbs.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))
    counts = dict(
        dbs.execute(
            select(Prediction.model_version_id, func.count()).group_by(Prediction.model_version_id)
        )
        .tuples()
        .all()
    )
    return render_template(
        "models/index.html",
        models=models,
        metrics={m.id: key_metrics(m.card) for m in models},
        predictions=counts,
    )


@bp.get("/<int:model_id>")
@login_required()
def detail(model_id: int) -> str:
    """The card of one model version, its metrics tables and plots."""
    model = _get(model_id)
    card = model.card if isinstance(model.card, dict) else {}
    names = artefact_names(card)
    folder = model_dir(model.location)
    present = [n for n in names if folder is not None and _artefact_path(folder, n) is not None]
    report = None
    if folder is not None and "report.md" in present:
        path = folder / "report.md"
        if path.stat().st_size <= REPORT_INLINE_BYTES:
            report = path.read_text(encoding="utf-8", errors="replace")
    return render_template(
        "models/detail.html",
        model=model,
        card=card,
        metrics=key_metrics(card),
        tables=metric_tables(card),
        metric_columns=METRIC_COLUMNS,
        confusion_columns=CONFUSION_COLUMNS,
        sources=_list_of_dicts(_dig(card, "training", "sources")),
        images=[n for n in present if n.endswith(".png")],
        documents=[n for n in present if not n.endswith(".png")],
        missing=[n for n in names if n not in present],
        report=report,
        history_chart=_history_chart(card),
        comparison=_comparison(model),
        training_runs=list(
            db.session().scalars(
                select(TrainingRun.id).where(TrainingRun.candidate_model_version_id == model.id)
            )
        ),
        hot_reload=HOT_RELOAD,
    )


@bp.get("/<int:model_id>/artefacts/<name>")
@login_required()
def artefact(model_id: int, name: str) -> Response:
    """A plot or report from the model's folder: only names the card lists, with an
    allowed suffix, and never a path outside that folder."""
    model = _get(model_id)
    folder = model_dir(model.location)
    card = model.card if isinstance(model.card, dict) else {}
    if folder is None or name not in artefact_names(card) or _artefact_path(folder, name) is None:
        abort(404)
    return send_from_directory(folder, name, mimetype=ARTEFACT_TYPES[Path(name).suffix])


def model_dir(location: str) -> Path | None:
    """The folder of a model: ``location`` itself, or the folder of the ``.tflite`` it
    names; None for a store URL."""
    if not location or "://" in location:
        return None
    path = Path(location)
    if path.suffix == ".tflite" or path.is_file():
        return path.parent
    return path


def artefact_names(card: Mapping[str, Any]) -> list[str]:
    """The card's servable artefacts: plain file names with an allowed suffix."""
    listed = card.get("artefacts")
    names = listed if isinstance(listed, list) else list(DEFAULT_ARTEFACTS)
    return [
        n
        for n in names
        if isinstance(n, str)
        and Path(n).suffix in ARTEFACT_TYPES
        and Path(n).name == n
        and not n.startswith(".")
        and "\\" not in n
    ]


def key_metrics(card: Mapping[str, Any]) -> dict[str, Any]:
    """The headline metrics: the whole validation set at the operating threshold."""
    point = _dig(card, "metrics", "validation", "overall", "operating")
    if not isinstance(point, Mapping):
        return {}
    return {k: point[k] for k in METRIC_COLUMNS if isinstance(point.get(k), int | float)}


def metric_tables(card: Mapping[str, Any]) -> list[MetricTable]:
    """One table per split and grouping (overall, per source, ...) found in the card."""
    tables: list[MetricTable] = []
    metrics = card.get("metrics")
    if not isinstance(metrics, Mapping):
        return tables
    for split, groups in metrics.items():
        if not isinstance(groups, Mapping):
            continue
        for group, subsets in groups.items():
            if not isinstance(subsets, Mapping):
                continue
            if group == "overall":
                subsets = {"all": subsets}
            table = MetricTable(f"{split}: {str(group).replace('_', ' ')}")
            for subset, points in subsets.items():
                if isinstance(points, Mapping):
                    for point, values in points.items():
                        if isinstance(values, Mapping):
                            table.rows.append((str(subset), str(point), values))
            if table.rows:
                tables.append(table)
    return tables


def _history_chart(card: Mapping[str, Any]) -> Any:
    """Validation AUC per epoch (head, then fine-tuning), when the card has it."""
    history = _dig(card, "training", "history")
    if not isinstance(history, Mapping):
        return None
    values = [
        v
        for key in ("head_val_auc", "fine_val_auc")
        for v in (history.get(key) or [])
        if isinstance(v, int | float)
    ]
    if not values:
        return None
    points = [(f"epoch {i}", float(v)) for i, v in enumerate(values, 1)]
    return charts.line_chart(points, title="Validation ROC-AUC per epoch", height=160)


def _comparison(model: ModelVersion) -> Agreement | None:
    """How ``model`` agrees with the active model (None for the active one itself, or
    when none is active)."""
    if model.active:
        return None
    dbs = db.session()
    active_id = dbs.scalar(select(ModelVersion.id).where(ModelVersion.active.is_(True)))
    if active_id is None:
        return None
    return agreement(session=dbs, model_id=model.id, active_id=active_id)


def _artefact_path(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it is a file inside ``folder`` (symlinks resolved)."""
    try:
        base = folder.resolve()
        path = (base / name).resolve()
    except (OSError, RuntimeError):
        return None
    return path if path.is_relative_to(base) and path.is_file() else None


def _get(model_id: int) -> ModelVersion:
    model = db.session().get(ModelVersion, model_id)
    if model is None:
        abort(404)
    return model


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _list_of_dicts(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []
