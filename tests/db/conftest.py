"""Row builders for the database tests (the database fixtures live in tests/conftest.py)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session

from deepscreen.db.models import Image, ImageSource, ModelVersion


@pytest.fixture
def bucket() -> str:
    """A bucket name no other test uses, so committed rows never collide."""
    return f"bucket-{secrets.token_hex(6)}"


@pytest.fixture
def add_image(db_session: Session, bucket: str) -> Callable[..., Image]:
    def add(key: str = "a.jpg", etag: str = "e1", **fields: object) -> Image:
        image = Image(bucket=bucket, key=key, etag=etag, source=ImageSource.SCAN, **fields)
        db_session.add(image)
        db_session.flush()
        return image

    return add


@pytest.fixture
def add_model_version(db_session: Session) -> Callable[..., ModelVersion]:
    def add(name: str = "m", active: bool = False) -> ModelVersion:
        version = ModelVersion(
            sha256=hashlib.sha256(secrets.token_bytes(8)).hexdigest(),
            name=name,
            location="deepscreen/models/default/model.tflite",
            card={"labels": ["real", "fake"], "threshold": 0.5},
            active=active,
        )
        db_session.add(version)
        db_session.flush()
        return version

    return add
