"""Placeholder blueprint, being written (issue 4)."""

from flask import Blueprint

bp = Blueprint("review", __name__)


@bp.get("/")
def queue() -> tuple[str, int]:
    return "not written yet", 501


@bp.get("/images")
def images() -> tuple[str, int]:
    return "not written yet", 501


@bp.get("/images/<int:image_id>")
def item(image_id: int) -> tuple[str, int]:
    return "not written yet", 501
