"""Placeholder blueprint, being written (issue 4)."""

from flask import Blueprint, Flask

bp = Blueprint("users", __name__, url_prefix="/users")


@bp.get("/")
def index() -> tuple[str, int]:
    return "not written yet", 501


def init_app(app: Flask) -> None:
    pass


@bp.get("/me")
def me() -> tuple[str, int]:
    return "not written yet", 501
