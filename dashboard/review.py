"""The review queue, the image list, the item page and its decisions, bulk actions,
and the authenticated image proxy (the bucket is never public)."""

from __future__ import annotations

import logging
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select

from dashboard import audit, db, decisions, queue, unfinished
from dashboard.auth import can, login_required
from dashboard.filters import VerdictFilter
from dashboard.queue import Cursor, Order
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ModelVersion, Prediction
from deepscreen.db.moderation import Action, Review, ReviewReason, ReviewState, Role, Verdict
from deepscreen.errors import DeepscreenError, PermanentError
from deepscreen.review import NO_FACE
from deepscreen.storage import store_for_bucket

logger = logging.getLogger(__name__)

bp = Blueprint("review", __name__)

#: Image types the proxy serves; anything else is refused rather than sniffed.
SERVABLE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")


def _listing(order: Order, default_state: str, template: str) -> str:
    if request.args.get("state") in unfinished.STATES:
        return unfinished.render_listing()  # images, not verdicts
    filters, errors = VerdictFilter.from_args(request.args, default_state=default_state)
    for message in errors:
        flash(message, "warning")
    dbs = db.session()
    result = queue.page(
        dbs,
        filters,
        order,
        after=Cursor.decode(request.args.get("after")),
        before=Cursor.decode(request.args.get("before")),
    )
    return render_template(
        template,
        page=result,
        total=queue.count(dbs, filters),
        filters=filters,
        args=filters.to_args(),
        order=order.value,
        models=dbs.scalars(select(ModelVersion).order_by(ModelVersion.id)).all(),
        now=utcnow(),
        states=["queue", "all", *[s.value for s in ReviewState], *unfinished.STATES],
        reasons=[r.value for r in ReviewReason],
        labels=[*decisions.DEFAULT_LABELS, NO_FACE],
        view="grid" if request.args.get("view") == "grid" else "list",
    )


@bp.get("/", endpoint="queue")
@login_required()
def queue_page() -> str:
    """Verdicts that need a human: open items, highest priority then oldest first."""
    return _listing(Order.PRIORITY, ReviewState.OPEN.value, "review/queue.html")


@bp.get("/images")
@login_required()
def images() -> str:
    """Every verdict, newest first, with the same filters."""
    return _listing(Order.NEWEST, "all", "review/queue.html")


@bp.get("/images/<int:image_id>")
@login_required()
def item(image_id: int) -> str:
    dbs = db.session()
    image = dbs.get(Image, image_id) or abort(404)
    verdict = dbs.scalar(select(Verdict).where(Verdict.image_id == image_id))
    # The prediction behind the verdict: its faces are drawn over the image.
    current = dbs.get(Prediction, verdict.prediction_id) if verdict is not None else None
    filters, _ = VerdictFilter.from_args(request.args, default_state=ReviewState.OPEN.value)
    order = (
        Order(request.args.get("order", Order.PRIORITY.value))
        if request.args.get("order") in {o.value for o in Order}
        else Order.PRIORITY
    )
    now = utcnow()
    claimed = False
    if verdict is not None and can(Role.MODERATOR) and verdict.state is not ReviewState.DECIDED:
        claimed = queue.claim(dbs, verdict.id, g.user.id, now, db.settings().review_claim_seconds)
        dbs.commit()
        dbs.refresh(verdict)
    neighbours: dict[str, int | None] = {"next": None, "prev": None}
    if verdict is not None:
        for name, forward in (("next", True), ("prev", False)):
            neighbours[name] = queue.neighbour(
                dbs, filters, order, verdict, forward=forward, user_id=g.user.id, now=now
            )
    predictions = dbs.execute(
        select(Prediction, ModelVersion)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.image_id == image_id)
        .order_by(Prediction.id.desc())
    ).all()
    history = dbs.scalars(
        select(Review).where(Review.image_id == image_id).order_by(Review.id.desc())
    ).all()
    return render_template(
        "review/item.html",
        image=image,
        verdict=verdict,
        current=current,
        faces=current.faces if current is not None else None,
        labels=decisions.labels_of(verdict),
        predictions=predictions,
        history=history,
        claimed=claimed,
        claimed_by_other=verdict is not None and queue.claimed_by_other(verdict, g.user.id, now),
        neighbours=neighbours,
        args={**filters.to_args(), "order": order.value},
        now=now,
    )


@bp.post("/images/<int:image_id>/decide")
@login_required(Role.MODERATOR)
def decide(image_id: int) -> Any:
    """Confirm, override, flag, escalate or annotate; then on to the next item."""
    dbs = db.session()
    verdict = dbs.scalar(
        select(Verdict).where(Verdict.image_id == image_id).with_for_update()
    ) or abort(404, description="this image has no verdict yet")
    # ``decision`` is ``action`` or ``action:label`` (one button per choice, no JS needed).
    name, _, label = request.form.get("decision", "").partition(":")
    try:
        action = Action(name)
    except ValueError:
        abort(400, description="unknown decision")
    now = utcnow()
    if queue.claimed_by_other(verdict, g.user.id, now):
        holder = verdict.claimer.username if verdict.claimer else "someone"
        abort(409, description=f"{holder} is reviewing this image; try another one")
    try:
        decisions.apply(
            dbs,
            verdict,
            action,
            user=g.user,
            label=label or None,
            note=(request.form.get("note") or "").strip() or None,
            now=now,
        )
    except decisions.InvalidDecision as exc:
        abort(400, description=str(exc))
    dbs.commit()
    if _wants_json():  # the queue's grid view decides its selection item by item
        return jsonify(
            image_id=image_id,
            action=action.value,
            state=verdict.state.value,
            final_label=verdict.final_label,
        )
    flash(f"image {image_id}: {action.value} recorded", "ok")
    if action is Action.NOTE:
        return redirect(url_for("review.item", image_id=image_id, **_carried()))
    filters, _ = VerdictFilter.from_args(request.form, default_state=ReviewState.OPEN.value)
    order = Order.NEWEST if request.form.get("order") == Order.NEWEST.value else Order.PRIORITY
    nxt = queue.neighbour(
        dbs, filters, order, verdict, forward=True, user_id=g.user.id, now=now
    ) or queue.first_open(dbs, filters, order, user_id=g.user.id, now=now)
    if nxt is None:
        flash("The queue is empty for these filters.", "ok")
        return redirect(url_for("review.queue", **filters.to_args()))
    return redirect(url_for("review.item", image_id=nxt, **_carried()))


def _wants_json() -> bool:
    return request.accept_mimetypes.best_match(["text/html", "application/json"]) == (
        "application/json"
    )


def _carried() -> dict[str, Any]:
    """The filters and order the moderator works in, carried from the form."""
    filters, _ = VerdictFilter.from_args(request.form, default_state=ReviewState.OPEN.value)
    order = request.form.get("order", Order.PRIORITY.value)
    return {
        **filters.to_args(),
        "order": order if order in {o.value for o in Order} else "priority",
    }


@bp.post("/images/<int:image_id>/release")
@login_required(Role.MODERATOR)
def release(image_id: int) -> Any:
    dbs = db.session()
    verdict = dbs.scalar(select(Verdict).where(Verdict.image_id == image_id)) or abort(404)
    queue.release(verdict, g.user.id)
    dbs.commit()
    return redirect(url_for("review.queue"))


@bp.route("/bulk", methods=["POST"])
@login_required(Role.MODERATOR)
def bulk() -> Any:
    """Step 1 shows the count and asks; step 2 (``confirm_selection`` sent) applies the
    action if the selection is still exactly the items shown (same verdict ids)."""
    filters, errors = VerdictFilter.from_args(request.form, default_state=ReviewState.OPEN.value)
    if errors:
        abort(400, description="; ".join(errors))
    try:
        action = Action(request.form.get("action", ""))
    except ValueError:
        abort(400, description="unknown action")
    if action not in decisions.BULK_ACTIONS:
        abort(400, description=f"{action.value} is not a bulk action")
    # ``new_label``, not ``label``: that name is the final-label filter of the selection.
    label = request.form.get("new_label") or None
    dbs = db.session()
    confirmed = request.form.get("confirm_selection")
    # Confirming locks the rows, so what was checked is what gets decided.
    selected = queue.selected_ids(dbs, filters, lock=confirmed is not None)
    total = len(selected)
    selection = queue.selection_digest(selected)
    if confirmed != selection:  # a fingerprint, not a secret: a plain comparison
        if confirmed is not None:
            flash(f"The selection changed: it now has {total} items.", "warning")
        return render_template(
            "review/bulk_confirm.html",
            total=total,
            selection=selection,
            action=action.value,
            label=label,
            args=filters.to_args(),
        )
    done = decisions.apply_bulk(
        dbs, filters, action, ids=selected, user=g.user, label=label, now=utcnow()
    )
    audit.record(
        f"bulk.{action.value}",
        target_type="selection",
        target_id=done,
        before={"filters": filters.to_args(), "count": total, "selection": selection},
        after={"label": label, "applied": done},
    )
    dbs.commit()
    flash(f"{action.value} applied to {done} items.", "ok")
    return redirect(url_for("review.queue", **filters.to_args()))


@bp.get("/images/<int:image_id>/content")
@login_required()
def content(image_id: int) -> Response:
    """The image bytes, fetched from the store for a logged-in user."""
    image = db.session().get(Image, image_id) or abort(404)
    settings = db.settings()
    client = current_app.extensions.get("deepscreen.s3_client")
    try:
        store = store_for_bucket(image.bucket, settings, client=client)
        data = store.get(image.key, max_bytes=settings.max_image_bytes)
    except PermanentError as exc:
        abort(404, description=f"image unavailable: {exc}")
    except DeepscreenError as exc:
        logger.warning("image %d: store unavailable: %s", image_id, exc)
        abort(503, description="the image store is unavailable; try again")
    mimetype = image.content_type if image.content_type in SERVABLE_TYPES else None
    if mimetype is None:
        abort(415, description="not an image type the dashboard shows")
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = "private, max-age=300"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
