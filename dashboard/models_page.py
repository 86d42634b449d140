"""Placeholder blueprint, being written (issue 4)."""

from flask import Blueprint, Flask

bp = Blueprint("models_page", __name__, url_prefix="/models")


@bp.get("/")
def index() -> tuple[str, int]:
    return "not written yet", 501


def init_app(app: Flask) -> None:
    pass
