"""Placeholder blueprint, being written (issue 4)."""

from flask import Blueprint, Flask

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.get("/")
def index() -> tuple[str, int]:
    return "not written yet", 501


def init_app(app: Flask) -> None:
    pass
