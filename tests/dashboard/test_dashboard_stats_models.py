"""The stats page (its numbers against seeded data, on SQLite and PostgreSQL) and the
models page (cards, plots through a route that serves nothing else, activation)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from dashboard_helpers import Seeded, make_settings, token_of
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from deepscreen.config import Settings
from deepscreen.db import migrate
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ModelVersion
from deepscreen.db.moderation import Action, AuditEvent, Review, ReviewState, Role, User, Verdict
from deepscreen.inference import default_model_dir

Seed = Callable[..., Seeded]
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "deepscreen" / "models" / "default"
XSS = '<script>alert("x")</script>'
BOTH = pytest.mark.parametrize("settings", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The conftest's settings, or (``indirect`` param ``postgresql``) a fresh migrated
    PostgreSQL database; every fixture built on ``settings`` follows."""
    if getattr(request, "param", "sqlite") == "postgresql":
        url = request.getfixturevalue("make_postgres_database")()
        settings = make_settings(tmp_path, database_url=url)
    else:
        settings = make_settings(tmp_path)
    migrate.upgrade(settings)
    return settings


def cells(html: str, attr: str, value: object) -> list[str]:
    """The text of each cell of the table row marked ``data-<attr>="<value>"``."""
    match = re.search(
        rf'<tr data-{attr}="{re.escape(str(value))}"[^>]*>(.*?)</tr>', html, re.DOTALL
    )
    assert match, f"no row {attr}={value}"
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", match[1])]


def verdict_of(dbs: Session, image_id: int) -> Verdict:
    row = dbs.scalar(select(Verdict).where(Verdict.image_id == image_id))
    assert row is not None
    return row


def decide(dbs: Session, image_id: int, label: str) -> None:
    v = verdict_of(dbs, image_id)
    v.human_label = v.final_label = label
    v.state, v.decided_at = ReviewState.DECIDED, utcnow()


# ---------------------------------------------------------------------------- stats


@pytest.fixture
def arranged(seed: Seed, dbs: Session, make_user: Callable[..., User]) -> Seeded:
    """Seven verdicts, four decided by a human (two against the model), two in the
    queue, five images done recently and one long ago, and some reviews."""
    # (Users first: on SQLite, ``dbs`` holds the write lock once it starts writing.)
    alice, bob = make_user("alice", Role.MODERATOR), make_user("bob", Role.MODERATOR)
    seeded = seed([0.1, 0.3, 0.4, 0.55, 0.62, 0.9, 0.97, 1.0])
    ids = seeded.image_ids
    decide(dbs, ids[3], "fake")  # agrees with the model
    decide(dbs, ids[4], "real")  # overrides
    decide(dbs, ids[5], "real")  # overrides
    decide(dbs, ids[7], "fake")  # agrees
    verdict_of(dbs, ids[6]).state = ReviewState.ESCALATED
    now = utcnow()
    images = {i.id: i for i in dbs.scalars(select(Image).where(Image.id.in_(ids)))}
    for image_id, ago in [(ids[0], 5), (ids[1], 5), (ids[2], 5), (ids[3], 125), (ids[4], 125)]:
        images[image_id].finished_at = now - timedelta(minutes=ago)
    images[ids[5]].finished_at = now - timedelta(days=3)
    for image_id in (ids[6], ids[7]):  # outside every window
        images[image_id].finished_at = now - timedelta(days=400)
    for user, action, ago in [
        (alice, Action.CONFIRM, 1),
        (alice, Action.CONFIRM, 2),
        (alice, Action.OVERRIDE, 3),
        (bob, Action.FLAG, 4),
        (bob, Action.OVERRIDE, 24 * 10),  # outside every window below 30 days
    ]:
        dbs.add(
            Review(
                image_id=ids[0],
                user_id=user.id,
                action=action,
                created_at=now - timedelta(hours=ago),
            )
        )
    dbs.commit()
    return seeded


def test_the_stats_page_needs_a_login_and_viewers_see_it(app: Flask, viewer: FlaskClient) -> None:
    response = app.test_client().get("/stats/")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")
    page = viewer.get("/stats/")
    assert page.status_code == 200
    assert "The queue is empty." in page.text and 'role="img"' in page.text


@BOTH
def test_stats_numbers_match_the_data(viewer: FlaskClient, arranged: Seeded) -> None:
    page = viewer.get("/stats/").text
    # Override rate: four decided by a human, two of them against the model
    assert cells(page, "model", arranged.model_version_id)[1:] == ["8", "4", "2", "50.0%"]
    # Labels: the model said 3 real and 5 fake; humans moved two fakes to real
    assert cells(page, "label", "real")[1:] == ["5", "3"]
    assert cells(page, "label", "fake")[1:] == ["3", "5"]
    # Queue: one open (uncertain, 0.4) and one escalated fake (0.97)
    assert cells(page, "state", "open")[:3] == ["open", "uncertain", "1"]
    assert cells(page, "state", "escalated")[:3] == ["escalated", "fake", "1"]
    assert '<span id="queue-total">2</span>' in page
    # Throughput over 48 h: five images, three in this hour, two two hours ago
    assert "5 images done in the last 2 days." in page
    done = [
        int(n) for n in re.findall(r'<td class="num">(\d+)</td></tr>', page.split("</details>")[0])
    ]
    assert len(done) == 48 and sum(done) == 5 and done[-1] + done[-2] >= 3
    # Activity in the window: alice confirmed twice and overrode once, bob flagged once
    alice, bob = cells(page, "user", "alice"), cells(page, "user", "bob")
    assert alice == ["alice", "2", "1", "0", "3"] and bob == ["bob", "0", "0", "1", "1"]


@BOTH
def test_score_histogram_and_longer_windows(viewer: FlaskClient, arranged: Seeded) -> None:
    page = viewer.get("/stats/?days=7").text
    assert "6 images done in the last 7 days." in page  # the one three days ago counts now
    table = page.split('id="score-table"')[1].split("</table>")[0]
    counts = [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', table)]
    expected = [0] * 20
    for b in (2, 6, 8, 11, 12, 18, 19, 19):  # 0.1 0.3 0.4 0.55 0.62 0.9 0.97 1.0
        expected[b] += 1
    assert counts == expected
    # Per day: seven rows, and the ten-day-old review appears only in a 30-day window
    assert "Day (UTC)" in page
    assert cells(page, "user", "bob")[-1] == "1"
    assert cells(viewer.get("/stats/?days=30").text, "user", "bob")[-1] == "2"
    # A window not offered falls back to the default
    assert "in the last 2 days" in viewer.get("/stats/?days=1%27;--").text


# --------------------------------------------------------------------------- models


@pytest.fixture
def card_model(dbs: Session, tmp_path: Path) -> ModelVersion:
    """The default model's card and plots in a folder of their own (no ``.tflite``: the
    location names one, as a worker registers it), under a hostile name."""
    folder = tmp_path / "models" / "m1"
    folder.mkdir(parents=True)
    for name in ("model_card.json", "roc.png", "confusion.png", "report.md"):
        shutil.copy(DEFAULT_MODEL / name, folder / name)
    (folder / "unlisted.png").write_bytes(b"\x89PNG not listed")
    (tmp_path / "models" / "secret.png").write_bytes(b"\x89PNG secret")
    (folder / "link.png").symlink_to(tmp_path / "models" / "secret.png")
    card = json.loads((folder / "model_card.json").read_text())
    card["artefacts"] += ["../secret.png", "link.png", "/etc/passwd.png"]
    model = ModelVersion(
        sha256="cd" * 32, name=XSS, location=str(folder / "model.tflite"), card=card
    )
    dbs.add(model)
    dbs.commit()
    return model


def test_models_pages_need_a_login(app: Flask, card_model: ModelVersion) -> None:
    client = app.test_client()
    for path in (
        "/models/",
        f"/models/{card_model.id}",
        f"/models/{card_model.id}/artefacts/roc.png",
    ):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path


def test_the_models_list_and_card_render_escaped(
    viewer: FlaskClient, card_model: ModelVersion, seed: Seed
) -> None:
    seeded = seed([0.2, 0.8])
    listing = viewer.get("/models/")
    assert listing.status_code == 200
    assert XSS not in listing.text and "&lt;script&gt;" in listing.text
    row = cells(listing.text, "model", card_model.id)
    card = json.loads((default_model_dir() / "model_card.json").read_text())
    assert row[2] == "cd" * 6 and row[4] == "inactive" and row[5] == f"{card['threshold']:.3f}"
    op = card["metrics"]["validation"]["overall"]["operating"]
    keys = ("roc_auc", "accuracy", "precision", "recall", "fpr")
    assert row[6:11] == [f"{op[k]:.3f}" for k in keys]
    assert cells(listing.text, "model", seeded.model_version_id)[4] == "active"
    assert "Activate" not in listing.text  # viewers change nothing
    detail = viewer.get(f"/models/{card_model.id}")
    assert detail.status_code == 200 and XSS not in detail.text
    for expected in (
        "Metrics, validation: per source",
        "ffhq-stylegan",
        "CC BY-NC-SA 4.0",
        "fine_tune_learning_rate",
        "max_abs_score_diff",
        f"/models/{card_model.id}/artefacts/roc.png",
        "## Validation metrics at the operating threshold",  # report.md inline
    ):
        assert expected in detail.text, expected
    assert viewer.get("/models/999999").status_code == 404


def test_artefacts_are_served_from_the_model_folder(
    viewer: FlaskClient, card_model: ModelVersion
) -> None:
    png = viewer.get(f"/models/{card_model.id}/artefacts/roc.png")
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert png.data == (DEFAULT_MODEL / "roc.png").read_bytes()
    report = viewer.get(f"/models/{card_model.id}/artefacts/report.md")
    assert report.status_code == 200 and report.mimetype == "text/plain"


@pytest.mark.parametrize(
    "name",
    [
        "..%2fsecret.png",
        "%2e%2e%2fsecret.png",
        "..%5csecret.png",
        "..%252fsecret.png",
        "/etc/passwd.png",
        "%2fetc%2fpasswd.png",
        "unlisted.png",  # in the folder, not in the card
        "model_card.json",  # listed, not a plot or report
        "model.tflite",
        "link.png",  # listed, but a symlink out of the folder
        "missing.png",
        "",
    ],
)
def test_the_artefact_route_serves_nothing_else(
    viewer: FlaskClient, card_model: ModelVersion, name: str
) -> None:
    response = viewer.get(f"/models/{card_model.id}/artefacts/{name}")
    assert response.status_code == 404
    assert b"secret" not in response.data


def test_a_card_without_an_artefact_list_serves_the_usual_plots(
    viewer: FlaskClient, dbs: Session, tmp_path: Path
) -> None:
    shutil.copy(DEFAULT_MODEL / "roc.png", tmp_path / "roc.png")
    (tmp_path / "notes.png").write_bytes(b"\x89PNG")
    model = ModelVersion(sha256="ef" * 32, name="bare", location=str(tmp_path), card={})
    dbs.add(model)
    dbs.commit()
    assert viewer.get(f"/models/{model.id}/artefacts/roc.png").status_code == 200
    assert viewer.get(f"/models/{model.id}/artefacts/notes.png").status_code == 404
    page = viewer.get(f"/models/{model.id}")
    assert page.status_code == 200 and "The card has no metrics." in page.text


def active_ids(dbs: Session) -> list[int]:
    """The active model versions. The read is ended (on SQLite it holds the write lock),
    which expires ``dbs``'s objects: tests keep ids, not rows."""
    ids = list(dbs.scalars(select(ModelVersion.id).where(ModelVersion.active.is_(True))))
    dbs.rollback()
    return ids


def activations(dbs: Session) -> list[tuple[object, ...]]:
    """``model.activate`` events as (who, target type, target id, before, after)."""
    stmt = select(
        AuditEvent.username,
        AuditEvent.target_type,
        AuditEvent.target_id,
        AuditEvent.before,
        AuditEvent.after,
    ).where(AuditEvent.action == "model.activate")
    events = [tuple(row) for row in dbs.execute(stmt)]
    dbs.rollback()
    return events


def test_only_admins_see_where_a_model_is_on_the_server(
    viewer: FlaskClient, moderator: FlaskClient, admin: FlaskClient, card_model: ModelVersion
) -> None:
    # Given a model registered from a folder of the server
    folder = str(Path(card_model.location).parent)
    # Then its page names that folder to admins, and to nobody else
    assert folder in admin.get(f"/models/{card_model.id}").text
    for client in (viewer, moderator):
        page = client.get(f"/models/{card_model.id}")
        assert page.status_code == 200 and folder not in page.text


def test_only_admins_activate_and_it_is_audited(
    client_for: Callable[[Role], FlaskClient],
    seed: Seed,
    card_model: ModelVersion,
    dbs: Session,
) -> None:
    old, new = seed([0.2]).model_version_id, card_model.id
    # Viewers and moderators are refused
    for role in (Role.VIEWER, Role.MODERATOR):
        client = client_for(role)
        token = token_of(client, "/models/")
        response = client.post(f"/models/{new}/activate", data={"csrf_token": token})
        assert response.status_code == 403, role
    admin = client_for(Role.ADMIN)
    # Without the CSRF token nothing happens
    assert admin.post(f"/models/{new}/activate").status_code == 400
    assert active_ids(dbs) == [old]
    # When an admin activates the new model
    page = admin.get("/models/")
    assert f'action="/models/{new}/activate"' in page.text
    response = admin.post(
        f"/models/{new}/activate", data={"csrf_token": token_of(admin, "/models/")}
    )
    assert response.status_code == 302
    # Then it is the only active one, and the audit log says who changed what
    assert active_ids(dbs) == [new]
    [(who, *event)] = activations(dbs)
    assert event == ["model", str(new), {"active": old}, {"active": new}]
    assert isinstance(who, str) and who.startswith("admin")
    # Activating it again changes nothing; an unknown model is a 404
    token = token_of(admin, "/models/")
    admin.post(f"/models/{new}/activate", data={"csrf_token": token})
    assert admin.post("/models/999999/activate", data={"csrf_token": token}).status_code == 404
    assert len(activations(dbs)) == 1
    # And back: the old model again, in one transaction
    admin.post(f"/models/{old}/activate", data={"csrf_token": token})
    assert active_ids(dbs) == [old]
