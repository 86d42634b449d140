"""Which model serves: admins promote a candidate, roll back to any earlier version, or
run a version in shadow next to the active one. Every change is audited.

Promotion and rollback are one move, `deepscreen.registry.activate` (the previous
active version is retired); the form says which one the admin meant, and the audit
log records it. Workers look at the active and shadow versions before every batch
and reload without a restart, so a change here reaches them within one batch.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from dashboard import audit, db
from dashboard.auth import login_required
from deepscreen import registry
from deepscreen.db.models import ModelStatus, ModelVersion
from deepscreen.db.moderation import Role
from deepscreen.errors import ModelError

bp = Blueprint("model_lifecycle", __name__, url_prefix="/models")

#: The ``intent`` field of the activate form: the audit action it records and the
#: status the version must have, so a stale page cannot promote what is no longer a
#: candidate. Without an intent the activation is recorded as ``model.activate``.
INTENTS: dict[str, tuple[str, ModelStatus]] = {
    "promote": ("model.promote", ModelStatus.CANDIDATE),
    "rollback": ("model.rollback", ModelStatus.RETIRED),
}

#: Shown with every change: workers check for one before each batch.
HOT_RELOAD = "Workers switch within one batch, without a restart."


@bp.post("/<int:model_id>/activate")
@login_required(Role.ADMIN)
def activate(model_id: int) -> Response:
    """Make this version the active one: promote a candidate (``intent=promote``) or
    roll back to a retired version (``intent=rollback``); the active one is retired."""
    intent = request.form.get("intent", "")
    if intent and intent not in INTENTS:
        abort(400, description=f"unknown intent {intent!r}")
    dbs = db.session()
    # Locked: two admins changing the active model at once take turns.
    model = dbs.get(ModelVersion, model_id, with_for_update=True)
    if model is None:
        abort(404)
    back = redirect(url_for("models_page.detail", model_id=model_id))
    if model.active:
        flash(f"Model #{model_id} is already active.", "info")
        return back
    action, status = INTENTS.get(intent, ("model.activate", model.status))
    if model.status is not status:
        flash(
            f"Model #{model_id} is {model.status.value}, not {status.value}: nothing changed.",
            "error",
        )
        return back
    was = {"status": model.status.value, "shadow": model.shadow}
    previous = registry.activate(dbs, model_id)
    before: dict[str, Any] = {"active": previous}
    after: dict[str, Any] = {"active": model_id}
    if intent:
        before.update(was)
        after.update(status=ModelStatus.ACTIVE.value, shadow=False, retired=previous)
    audit.record(action, target_type="model", target_id=model_id, before=before, after=after)
    dbs.commit()
    retired = f"; #{previous} is retired" if previous is not None else ""
    flash(f"Model #{model_id} is now the active model{retired}. {HOT_RELOAD}", "success")
    return back


@bp.post("/<int:model_id>/shadow")
@login_required(Role.ADMIN)
def shadow(model_id: int) -> Response:
    """Run this version in shadow (``on=1``; the one in shadow before stops) or stop
    it (``on=0``). Its scores are stored next to the active model's, never used."""
    on = request.form.get("on") == "1"
    dbs = db.session()
    model = dbs.get(ModelVersion, model_id)
    if model is None:
        abort(404)
    back = redirect(url_for("models_page.detail", model_id=model_id))
    previous = dbs.scalar(select(ModelVersion.id).where(ModelVersion.shadow.is_(True)))
    if (previous == model_id) == on:
        flash(f"Model #{model_id} is {'already' if on else 'not'} in shadow.", "info")
        return back
    try:
        registry.set_shadow(dbs, model_id, on)
    except ModelError as exc:
        dbs.rollback()
        flash(f"Model #{model_id} cannot run in shadow: {exc}.", "error")
        return back
    audit.record(
        "model.shadow",
        target_type="model",
        target_id=model_id,
        before={"shadow": previous},
        after={"shadow": model_id if on else None},
    )
    dbs.commit()
    if on:
        stopped = f"; #{previous} left shadow" if previous is not None else ""
        flash(f"Model #{model_id} now runs in shadow{stopped}. {HOT_RELOAD}", "success")
    else:
        flash(f"Model #{model_id} no longer runs in shadow. {HOT_RELOAD}", "success")
    return back
