"""Dashboard fixtures: an app on a fresh migrated database (SQLite by default; the
``pg_app`` variant on PostgreSQL), users of every role, logged-in test clients, and
seeded images with predictions and verdicts.

Seeding goes through the same kernel code the worker uses (`register_images`,
`add_predictions`, `record_verdicts`), so the dashboard sees what production writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from dashboard_helpers import PASSWORD, Seeded, login, make_settings
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from dashboard import create_app
from dashboard.auth import new_user
from deepscreen.config import Settings
from deepscreen.db import migrate, queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import ImageSource, ModelVersion
from deepscreen.db.moderation import Role, User
from deepscreen.db.session import make_engine, make_session_factory, session_scope
from deepscreen.review import record_verdicts
from deepscreen.storage import LocalStore, ObjectInfo


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = make_settings(tmp_path)
    migrate.upgrade(settings)
    return settings


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings, TESTING=True)


@pytest.fixture
def dbs(settings: Settings) -> Iterator[Session]:
    """A session on the app's database for arranging and checking (commits)."""
    engine = make_engine(settings)
    with session_scope(make_session_factory(engine)) as session:
        yield session
    engine.dispose()


@pytest.fixture
def make_user(settings: Settings) -> Callable[..., User]:
    """``make_user(name, role)``: a committed user whose password is `PASSWORD`."""
    engine = make_engine(settings)
    factory = make_session_factory(engine)

    def make(username: str, role: Role = Role.MODERATOR, password: str = PASSWORD) -> User:
        with session_scope(factory) as session:
            user = new_user(username, role, password)
            session.add(user)
        return user

    return make


@pytest.fixture
def client_for(app: Flask, make_user: Callable[..., User]) -> Callable[[Role], FlaskClient]:
    """``client_for(role)``: a test client logged in as a new user of that role."""
    counter = iter(range(1000))

    def make(role: Role) -> FlaskClient:
        user = make_user(f"{role.value}{next(counter)}", role)
        client = app.test_client()
        response = login(client, user.username)
        assert response.status_code == 302, response.text
        return client

    return make


@pytest.fixture
def admin(client_for: Callable[[Role], FlaskClient]) -> FlaskClient:
    return client_for(Role.ADMIN)


@pytest.fixture
def moderator(client_for: Callable[[Role], FlaskClient]) -> FlaskClient:
    return client_for(Role.MODERATOR)


@pytest.fixture
def viewer(client_for: Callable[[Role], FlaskClient]) -> FlaskClient:
    return client_for(Role.VIEWER)


@pytest.fixture
def seed(settings: Settings, tmp_path: Path) -> Callable[..., Seeded]:
    """``seed(scores, keys=None)``: a folder bucket with one tiny PNG per score,
    registered, predicted with those scores (threshold 0.5) and given verdicts by the
    review policy, as a worker would."""
    from sample_images import image_bytes

    engine = make_engine(settings)
    factory = make_session_factory(engine)
    counter = iter(range(1000))

    def make(scores: list[float], keys: list[str] | None = None) -> Seeded:
        folder = tmp_path / f"bucket{next(counter)}"
        folder.mkdir()
        keys = keys or [f"img{i:04d}.png" for i in range(len(scores))]
        for i, key in enumerate(keys):
            path = folder / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(image_bytes(i, "PNG"))
        store = LocalStore(folder)
        now = utcnow()
        with session_scope(factory) as session:
            model = queries.ensure_model_version(
                session=session,
                sha256="ab" * 32,
                name="test-model",
                location=str(folder),
                card={"threshold": 0.5, "labels": ["real", "fake"]},
            )
            objects = [ObjectInfo(store.bucket, key, f"etag{key}", 10, now) for key in keys]
            ids = queries.register_images(
                session=session,
                objects=objects,
                source=ImageSource.SCAN,
                now=now - timedelta(minutes=len(keys)),
            )
        with session_scope(factory) as session:
            rows = [
                {
                    "image_id": image_id,
                    "model_version_id": model.id,
                    "score": score,
                    "label": "fake" if score >= 0.5 else "real",
                    "threshold": 0.5,
                    "inference_ms": 1.0,
                    "created_at": now,
                }
                for image_id, score in zip(ids, scores, strict=True)
            ]
            queries.add_predictions(session=session, rows=rows)
            record_verdicts(
                session=session,
                image_ids=ids,
                model_version_id=model.id,
                settings=settings,
                now=now,
            )
            for image in queries.get_images(session=session, ids=ids):
                # What a worker records after decoding
                image.status = image.status.DONE
                image.content_type = "image/png"
                image.finished_at = now
        return Seeded(list(ids), model.id, folder)

    return make


def model_versions(dbs: Session) -> list[ModelVersion]:
    return list(dbs.query(ModelVersion).all())
