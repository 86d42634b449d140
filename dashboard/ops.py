"""Placeholder blueprint, being written (issue 4)."""

from flask import Blueprint, Flask

bp = Blueprint("ops", __name__)


@bp.get("/")
def index() -> tuple[str, int]:
    return "not written yet", 501


def init_app(app: Flask) -> None:
    pass
