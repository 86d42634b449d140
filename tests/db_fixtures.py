"""Shared by fixtures: a fresh database of either backend, migrated to head."""

from __future__ import annotations

import pytest

from deepscreen.config import Settings
from deepscreen.db import migrate


def migrated_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A new database of the backend named by ``request.param`` ("sqlite" or "postgresql")."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'deepscreen.sqlite3'}"
    else:
        url = request.getfixturevalue("make_postgres_database")()
    migrate.upgrade(Settings(data_dir=tmp_path_factory.mktemp("data"), database_url=url))
    return url
