"""The read API (``/api/v1``): images with their verdicts and reviews, and model versions.

Every route needs ``Authorization: Bearer <token>`` (a token made on the user's
account page; only its SHA-256 is stored) or, for a browser, a logged-in session.
The image list takes the review queue's filters (`VerdictFilter`) plus ``status``,
and pages by keyset on the image id (``after``, ``limit``). Errors are JSON
``{"error": ..., "details": [...]}``. The write endpoints live beside it: submitting
images (`dashboard.api_submit`) and webhooks (`dashboard.api_webhooks`). The OpenAPI
document describing all this is `dashboard.openapi`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, g, jsonify, request
from sqlalchemy import select
from werkzeug.wrappers import Response

from dashboard import db, openapi
from dashboard.accounts import hash_token, isoformat
from dashboard.filters import VerdictFilter
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageStatus, ModelVersion, Prediction
from deepscreen.db.moderation import ApiToken, Review, User, Verdict

URL_PREFIX = "/api/v1"
bp = Blueprint("api", __name__, url_prefix=URL_PREFIX)

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
#: Largest id a BIGINT holds; larger numbers in a URL are unknown ids, not a crash.
MAX_ID = 2**63 - 1
#: ``last_used_at`` is written at most this often per token (not on every request).
LAST_USED_RESOLUTION = timedelta(minutes=1)


class BadRequest(Exception):
    """Query parameters that do not parse; each message names one."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("; ".join(details))
        self.details = details


@bp.before_request
def authenticate() -> Response | None:
    """Accept a live bearer token, else a logged-in session; answer 401 otherwise."""
    header = request.headers.get("Authorization")
    if header is None:
        return None if g.get("user") is not None else error(401, "authentication required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return error(401, "expected Authorization: Bearer <token>")
    dbs = db.session()
    row = dbs.scalar(
        select(ApiToken).where(
            ApiToken.token_hash == hash_token(token.strip()), ApiToken.revoked_at.is_(None)
        )
    )
    if row is None or not row.user.active:
        return error(401, "invalid or revoked token")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        row.last_used_at = now
        dbs.commit()
    g.user, g.api_token = row.user, row
    return None


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"  # moderation data: never cached
    return response


@bp.errorhandler(BadRequest)
def _bad_request(exc: BadRequest) -> Response:
    return error(400, "invalid query parameters", exc.details)


def error(status: int, message: str, details: list[str] | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if details:
        body["details"] = details
    response = jsonify(body)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="deepscreen"'
    return response


@bp.get("/images")
def images() -> Response:
    """Images (with or without a verdict) in id order, filtered like the queue."""
    filt, problems = VerdictFilter.from_args(request.args)
    details = [p.replace("ignored ", "bad value ", 1) for p in problems]
    limit = int_arg("limit", DEFAULT_LIMIT, 1, MAX_LIMIT, details)
    after = int_arg("after", 0, 0, MAX_ID, details)
    status = _status_arg(details)
    if details:
        raise BadRequest(details)
    # An outer join lists images that have no verdict yet (queued, failed); any
    # filter on a verdict column leaves them out, as NULL matches no condition.
    stmt = (
        select(Image, Verdict, Prediction)
        .outerjoin(Verdict, Verdict.image_id == Image.id)
        .outerjoin(Prediction, Prediction.id == Verdict.prediction_id)
    )
    stmt = filt.apply(stmt).where(Image.id > after)
    if status is not None:
        stmt = stmt.where(Image.status == status)
    rows = db.session().execute(stmt.order_by(Image.id).limit(limit + 1)).all()
    page = rows[:limit]
    return jsonify(
        items=[image_summary(image, verdict, pred) for image, verdict, pred in page],
        limit=limit,
        next_after=page[-1][0].id if len(rows) > limit else None,
    )


@bp.get("/images/<int:image_id>")
def image(image_id: int) -> Response:
    """One image: metadata, every prediction, the current verdict, the review history."""
    dbs = db.session()
    found = dbs.get(Image, image_id) if image_id <= MAX_ID else None
    if found is None:
        return error(404, f"no image {image_id}")
    verdict = dbs.scalar(select(Verdict).where(Verdict.image_id == image_id))
    current = dbs.get(Prediction, verdict.prediction_id) if verdict is not None else None
    predictions = dbs.execute(
        select(Prediction, ModelVersion)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.image_id == image_id)
        .order_by(Prediction.created_at, Prediction.id)
    ).all()
    reviews = dbs.execute(
        select(Review, User.username)
        .join(User, User.id == Review.user_id)
        .where(Review.image_id == image_id)
        .order_by(Review.created_at, Review.id)
    ).all()
    return jsonify(
        {
            **image_summary(found, verdict, current),
            "etag": found.etag,
            "sha256": found.sha256,
            "size": found.size,
            "content_type": found.content_type,
            "width": found.width,
            "height": found.height,
            "failure_reason": found.failure_reason,
            "finished_at": isoformat(found.finished_at),
            "predictions": [_prediction(p, m) for p, m in predictions],
            "reviews": [_review(r, name) for r, name in reviews],
        }
    )


@bp.get("/models")
def models() -> Response:
    rows = db.session().scalars(select(ModelVersion).order_by(ModelVersion.id))
    return jsonify(items=[_model(m) for m in rows])


@bp.get("/openapi.json")
def openapi_document() -> Response:
    return jsonify(openapi.document(server_url=request.script_root + URL_PREFIX))


def image_summary(
    image: Image, verdict: Verdict | None, prediction: Prediction | None
) -> dict[str, Any]:
    """An image and its verdict (``prediction`` is the one the verdict points at)."""
    return {
        "id": image.id,
        "bucket": image.bucket,
        "key": image.key,
        "status": image.status.value,
        "source": image.source.value,
        "created_at": isoformat(image.created_at),
        "verdict": None if verdict is None else _verdict(verdict, prediction),
    }


def _verdict(v: Verdict, p: Prediction | None) -> dict[str, Any]:
    return {
        "model_version_id": v.model_version_id,
        "score": v.score,
        "model_label": v.model_label,
        "model_reason": p.reason if p is not None else None,
        "faces": p.faces if p is not None else None,
        "human_label": v.human_label,
        "final_label": v.final_label,
        "state": v.state.value,
        "reason": v.reason.value if v.reason is not None else None,
        "priority": v.priority,
        "flagged": v.flagged,
        "flag_label": v.flag_label,
        "decided_at": isoformat(v.decided_at),
        "updated_at": isoformat(v.updated_at),
    }


def _prediction(p: Prediction, model: ModelVersion) -> dict[str, Any]:
    return {
        "id": p.id,
        "model_version": {"id": model.id, "name": model.name, "sha256": model.sha256},
        "score": p.score,
        "label": p.label,
        "reason": p.reason,
        "faces": p.faces,
        "threshold": p.threshold,
        "inference_ms": p.inference_ms,
        "created_at": isoformat(p.created_at),
    }


def _review(r: Review, username: str) -> dict[str, Any]:
    return {
        "id": r.id,
        "user": username,
        "action": r.action.value,
        "label": r.label,
        "note": r.note,
        "model_version_id": r.model_version_id,
        "score": r.score,
        "created_at": isoformat(r.created_at),
    }


def _model(m: ModelVersion) -> dict[str, Any]:
    card = m.card if isinstance(m.card, dict) else {}
    threshold = card.get("threshold")
    labels = card.get("labels")
    return {
        "id": m.id,
        "name": m.name,
        "sha256": m.sha256,
        "active": m.active,
        "threshold": float(threshold)
        if isinstance(threshold, int | float) and not isinstance(threshold, bool)
        else None,
        "labels": [str(x) for x in labels] if isinstance(labels, list) else None,
        "created_at": isoformat(m.created_at),
    }


def int_arg(name: str, default: int, low: int, high: int, details: list[str]) -> int:
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        details.append(f"{name} must be an integer from {low} to {high}")
        return default
    return value


def _status_arg(details: list[str]) -> ImageStatus | None:
    raw = request.args.get("status", "").strip()
    if not raw:
        return None
    try:
        return ImageStatus(raw)
    except ValueError:
        details.append(f"status must be one of {', '.join(s.value for s in ImageStatus)}")
        return None
