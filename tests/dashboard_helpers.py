"""Shared by the dashboard tests and their fixtures: the test password, seeded data,
settings, and logging in through the form (imported by name, unlike fixtures)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from deepscreen.config import Settings

PASSWORD = "correct horse battery staple"


@dataclass
class Seeded:
    """What `seed` registered: image ids in order, and the model version."""

    image_ids: list[int]
    model_version_id: int
    folder: Path


def make_settings(tmp_path: Path, database_url: str = "", **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "secret_key": "test-secret-key-" + "x" * 32,
        "cookie_secure": False,  # the test client speaks plain http://localhost
        "review_band": 0.15,
        "review_fakes": True,
        "review_audit_rate": 0.0,
        "login_max_failures": 3,
        "login_lockout_seconds": 60,
    }
    values.update(overrides)
    return Settings(**values)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> Any:
    """Log in through the form (fetching the CSRF token first); returns the response."""
    page = client.get("/login")
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf_from(page.text)},
    )


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', html) or re.search(
        r'name="csrf_token" value="([^"]+)"', html
    )
    assert match, "no CSRF token on the page"
    return match.group(1)


def token_of(client: FlaskClient, path: str = "/") -> str:
    """The CSRF token of ``client``'s session, read off a page."""
    return csrf_from(client.get(path).text)
