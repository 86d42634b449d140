"""The retraining side of the dashboard: the model lifecycle (promote, roll back, shadow;
admins only, audited), a shadow model's agreement with the active model and with the
moderators, the gate report, and the training runs page with its "Retrain now", which
queues a run and sends ``deepscreen.retrain`` by name to the embedded broker."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from api_client import queued_tasks
from dashboard_helpers import Seeded, login, make_settings, token_of
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_dashboard_stats_models import cells

from dashboard import create_app
from dashboard.agreement import agreement
from dashboard.retraining import BROKER_DOWN, duration
from deepscreen.config import Settings
from deepscreen.db import migrate, queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import ModelStatus, ModelVersion
from deepscreen.db.moderation import AuditEvent, ReviewState, Role, User, Verdict
from deepscreen.db.retraining import RunStatus, RunTrigger, TrainingRun

Seed = Callable[..., Seeded]
XSS = '<script>alert("x")</script>'
BOTH = pytest.mark.parametrize("settings", ["sqlite", "postgresql"], indirect=True)
RETRAIN_DATA = ("tree:/srv/faces",)


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Retraining configured, the embedded filesystem broker under the test's folder; on
    SQLite, or (``indirect`` param ``postgresql``) on a fresh PostgreSQL database."""
    url = ""
    if getattr(request, "param", "sqlite") == "postgresql":
        url = request.getfixturevalue("make_postgres_database")()
    settings = make_settings(
        tmp_path, database_url=url, retrain_data=RETRAIN_DATA, broker_url="filesystem://"
    )
    migrate.upgrade(settings)
    return settings


def report(
    reason: str = "golden ROC-AUC 0.9312 against the active model's 0.9200",
) -> dict[str, Any]:
    """A gate report in training/gate.py's layout."""
    return {
        "schema": 1,
        "passed": True,
        "reasons": [reason, "3 of 4 corrections classified as the moderators did (75%)"],
        "criteria": {
            "golden": {
                "candidate_auc": 0.93125,
                "active_auc": 0.92,
                "max_auc_drop": 0.01,
                "min_auc": 0.91,
                "passed": True,
            },
            "regression": {
                "passed": True,
                "vacuous": False,
                "fixed": 3,
                "n": 4,
                "fixed_share": 0.75,
                "min_fixed_share": 0.5,
            },
        },
        "golden": {"source": "tree:/srv/golden", "n": 200, "unreadable": 0},
        "regression": {"n": 4, "active": {"fixed": 1, "fixed_share": 0.25}},
    }


def add_model(dbs: Session, sha: str, **fields: Any) -> int:
    model = ModelVersion(
        sha256=sha * 32,
        name=f"model-{sha}",
        location="/nowhere",
        card={"threshold": 0.5, "labels": ["real", "fake"]},
        **fields,
    )
    dbs.add(model)
    dbs.commit()
    return model.id


def lifecycle(dbs: Session) -> dict[int, tuple[str, bool, bool]]:
    """Each version's (status, active, shadow). The read is ended: on SQLite it holds
    the write lock, so tests keep ids, not rows."""
    rows = dbs.execute(
        select(ModelVersion.id, ModelVersion.status, ModelVersion.active, ModelVersion.shadow)
    )
    out = {row.id: (row.status.value, row.active, row.shadow) for row in rows}
    dbs.rollback()
    return out


def audited(dbs: Session, action: str) -> list[tuple[Any, ...]]:
    """(who, target id, before, after) of each ``action`` event, oldest first."""
    stmt = (
        select(AuditEvent.username, AuditEvent.target_id, AuditEvent.before, AuditEvent.after)
        .where(AuditEvent.action == action)
        .order_by(AuditEvent.id)
    )
    events = [tuple(row) for row in dbs.execute(stmt)]
    dbs.rollback()
    return events


def runs(dbs: Session) -> list[tuple[Any, ...]]:
    """(id, status, trigger, requested_by, error) of every run, oldest first."""
    stmt = select(
        TrainingRun.id,
        TrainingRun.status,
        TrainingRun.trigger,
        TrainingRun.requested_by,
        TrainingRun.error,
    ).order_by(TrainingRun.id)
    out = [tuple(row) for row in dbs.execute(stmt)]
    dbs.rollback()
    return out


def post(client: FlaskClient, path: str, **form: str) -> Any:
    return client.post(path, data={"csrf_token": token_of(client, "/models/"), **form})


# ---------------------------------------------------------------------------- roles


def test_only_admins_change_models_or_start_runs(
    client_for: Callable[[Role], FlaskClient], seed: Seed, dbs: Session, settings: Settings
) -> None:
    active = seed([0.2]).model_version_id
    candidate = add_model(dbs, "cd", gate_report=report())
    before = lifecycle(dbs)
    for role in (Role.VIEWER, Role.MODERATOR):
        client = client_for(role)
        # They see the pages, without the buttons
        page = client.get(f"/models/{candidate}")
        assert page.status_code == 200 and "Promote" not in page.text
        assert "Run in shadow" not in page.text
        training = client.get("/models/training")
        assert training.status_code == 200 and "Retrain now" not in training.text
        # And every change is refused
        for path, form in [
            (f"/models/{candidate}/activate", {"intent": "promote"}),
            (f"/models/{active}/activate", {"intent": "rollback"}),
            (f"/models/{candidate}/shadow", {"on": "1"}),
            ("/models/training/start", {}),
        ]:
            assert post(client, path, **form).status_code == 403, (role, path)
    assert lifecycle(dbs) == before and runs(dbs) == [] and queued_tasks(settings) == []


# ------------------------------------------------------------------ promote, rollback


@BOTH
def test_promote_then_roll_back_flips_the_active_model_and_audits_both(
    admin: FlaskClient, seed: Seed, dbs: Session
) -> None:
    # Given the seeded active model and a gated candidate
    old = seed([0.2]).model_version_id
    new = add_model(dbs, "cd", gate_report=report())
    page = admin.get(f"/models/{new}")
    assert 'name="intent" value="promote"' in page.text and "within one batch" in page.text
    # When an admin promotes the candidate
    response = post(admin, f"/models/{new}/activate", intent="promote")
    assert response.status_code == 302 and response.headers["Location"] == f"/models/{new}"
    # Then it is the active model and the old one is retired
    assert lifecycle(dbs) == {old: ("retired", False, False), new: ("active", True, False)}
    [(who, target, before, after)] = audited(dbs, "model.promote")
    assert who.startswith("admin") and target == str(new)
    assert before == {"active": old, "status": "candidate", "shadow": False}
    assert after == {"active": new, "status": "active", "shadow": False, "retired": old}
    # And the retired one offers a rollback, in one click
    page = admin.get(f"/models/{old}")
    assert "Roll back to this version" in page.text and "Promote" not in page.text
    response = post(admin, f"/models/{old}/activate", intent="rollback")
    assert response.status_code == 302
    assert lifecycle(dbs) == {old: ("active", True, False), new: ("retired", False, False)}
    [(_, target, before, after)] = audited(dbs, "model.rollback")
    assert target == str(old)
    assert before == {"active": new, "status": "retired", "shadow": False}
    assert after == {"active": old, "status": "active", "shadow": False, "retired": new}
    # A stale "Promote" (the version is no longer a candidate) changes nothing
    stale = post(admin, f"/models/{new}/activate", intent="promote")
    assert lifecycle(dbs)[old] == ("active", True, False)
    followed = admin.get(stale.headers["Location"])
    assert "is retired, not candidate: nothing changed" in followed.text
    # An unknown intent or model is refused
    assert post(admin, f"/models/{new}/activate", intent="demote").status_code == 400
    assert post(admin, "/models/999999/activate", intent="promote").status_code == 404
    assert len(audited(dbs, "model.promote")) == 1 and len(audited(dbs, "model.rollback")) == 1


def test_the_list_shows_status_badges_and_one_click_actions(
    admin: FlaskClient, seed: Seed, dbs: Session
) -> None:
    active = seed([0.2]).model_version_id
    candidate = add_model(dbs, "cd")
    retired = add_model(dbs, "ef", status=ModelStatus.RETIRED, shadow=True)
    page = admin.get("/models/").text
    # Serving and lifecycle of each row
    assert [cells(page, "model", active)[i] for i in (4, 12)] == ["active", "active"]
    assert [cells(page, "model", candidate)[i] for i in (4, 12)] == ["inactive", "candidate"]
    assert [cells(page, "model", retired)[i] for i in (4, 12)] == ["shadow", "retired shadow"]
    # And one click promotes the candidate or rolls back to the retired version
    forms = re.findall(
        r'action="/models/(\d+)/activate".*?name="intent" value="(\w+)"', page, re.DOTALL
    )
    assert sorted(forms) == sorted([(str(candidate), "promote"), (str(retired), "rollback")])
    assert 'href="/models/training"' in page


# ---------------------------------------------------------------------------- shadow


def test_shadow_is_exclusive_audited_and_never_the_active_model(
    admin: FlaskClient, seed: Seed, dbs: Session
) -> None:
    active = seed([0.2]).model_version_id
    a, b = add_model(dbs, "cd"), add_model(dbs, "ef")
    # When an admin runs a in shadow, then b
    assert "Run in shadow" in admin.get(f"/models/{a}").text
    assert post(admin, f"/models/{a}/shadow", on="1").status_code == 302
    assert lifecycle(dbs)[a][2] is True
    assert "Stop shadow" in admin.get(f"/models/{a}").text
    post(admin, f"/models/{b}/shadow", on="1")
    # Then only b is in shadow
    state = lifecycle(dbs)
    assert [m for m, (_, _, shadow) in state.items() if shadow] == [b]
    # Asking again changes nothing; stopping b leaves none
    post(admin, f"/models/{b}/shadow", on="1")
    post(admin, f"/models/{b}/shadow", on="0")
    assert not any(shadow for _, _, shadow in lifecycle(dbs).values())
    events = [(target, before, after) for _, target, before, after in audited(dbs, "model.shadow")]
    assert events == [
        (str(a), {"shadow": None}, {"shadow": a}),
        (str(b), {"shadow": a}, {"shadow": b}),
        (str(b), {"shadow": b}, {"shadow": None}),
    ]
    # The active model cannot also run in shadow
    response = post(admin, f"/models/{active}/shadow", on="1")
    assert "cannot run in shadow" in admin.get(response.headers["Location"]).text
    assert lifecycle(dbs)[active] == ("active", True, False)
    # And promoting a model in shadow takes it out of shadow
    post(admin, f"/models/{a}/shadow", on="1")
    post(admin, f"/models/{a}/activate", intent="promote")
    assert lifecycle(dbs)[a] == ("active", True, False)
    assert len(audited(dbs, "model.shadow")) == 4


@BOTH
def test_shadow_agreement_with_the_active_model_and_the_moderators(
    viewer: FlaskClient, seed: Seed, dbs: Session
) -> None:
    # Given six images scored by the active model (labels: real real fake fake fake real)
    seeded = seed([0.1, 0.3, 0.6, 0.8, 0.9, 0.2])
    ids, active = seeded.image_ids, seeded.model_version_id
    # And a model in shadow that scored the first five (real fake fake real fake)
    shadow = add_model(dbs, "cd", shadow=True)
    now = utcnow()
    rows = [
        {
            "image_id": image_id,
            "model_version_id": shadow,
            "score": score,
            "label": "fake" if score >= 0.5 else "real",
            "threshold": 0.5,
            "inference_ms": 1.0,
            "created_at": now,
        }
        for image_id, score in zip(ids, [0.2, 0.7, 0.65, 0.3, 0.95], strict=False)
    ]
    queries.add_predictions(session=dbs, rows=rows)
    # And moderators decided images 1 and 3 (the shadow model was right on both), and
    # image 5, which the shadow model never scored
    for image_id, label in [(ids[1], "fake"), (ids[3], "real"), (ids[5], "fake")]:
        verdict = dbs.scalars(select(Verdict).where(Verdict.image_id == image_id)).one()
        verdict.human_label = verdict.final_label = label
        verdict.state, verdict.decided_at = ReviewState.DECIDED, now
    dbs.commit()
    # When the agreement is computed
    result = agreement(session=dbs, model_id=shadow, active_id=active)
    dbs.rollback()
    # Then it covers the five images both scored: 3 same labels, mean |diff| 0.22
    assert (result.n, result.same_label) == (5, 3) and result.label_agreement == 0.6
    assert result.mean_abs_score_diff == pytest.approx((0.1 + 0.4 + 0.05 + 0.5 + 0.05) / 5)
    # And the two decided images among them: shadow 2/2 right, active 0/2
    assert (result.n_human, result.model_matches_human, result.active_matches_human) == (2, 2, 0)
    assert (result.model_human_share, result.active_human_share) == (1.0, 0.0)
    # And the model page says so
    page = viewer.get(f"/models/{shadow}").text
    for text in ("60.0%", "(3/5)", "0.2200", "100.0%", "(2/2)", "0.0%", "(0/2)"):
        assert text in page, text
    # A model nothing was compared with says that instead
    other = add_model(dbs, "ef")
    assert "No image has been scored by both" in viewer.get(f"/models/{other}").text
    assert 'id="agreement"' not in viewer.get(f"/models/{active}").text


# ----------------------------------------------------------------------- gate report


def test_the_gate_report_is_shown_and_escaped(
    viewer: FlaskClient, seed: Seed, dbs: Session
) -> None:
    seed([0.2])
    gated = report(reason=XSS)
    gated["golden"]["source"] = XSS
    model = add_model(dbs, "cd", gate_report=gated)
    run = TrainingRun(
        trigger=RunTrigger.SCHEDULE,
        status=RunStatus.REGISTERED,
        candidate_model_version_id=model,
        gate_report=gated,
        error=XSS,
    )
    dbs.add(run)
    dbs.commit()
    run_id = run.id
    for path in (f"/models/{model}", f"/models/training/{run_id}", "/models/training"):
        response = viewer.get(path)
        assert response.status_code == 200 and XSS not in response.text, path
    for path in (f"/models/{model}", f"/models/training/{run_id}"):
        html = viewer.get(path).text
        assert "&lt;script&gt;" in html and 'id="gate-report"' in html
        for text in ("0.9313", "0.9200", "≥ 0.9100", "75.0%", "(3/4)", "25.0%", "≥ 50.0%"):
            assert text in html, (path, text)
    assert f"/models/training/{run_id}" in viewer.get(f"/models/{model}").text
    assert viewer.get("/models/training/999999").status_code == 404


# ----------------------------------------------------------------------- training runs


def test_retrain_now_queues_a_run_and_sends_it_by_name(
    admin: FlaskClient, dbs: Session, settings: Settings
) -> None:
    assert "Retrain now" in admin.get("/models/training").text
    # When an admin asks for a run
    response = post(admin, "/models/training/start")
    # Then a manual run is queued, in the database first, then in the broker by name
    [(run_id, status, trigger, requested_by, error)] = runs(dbs)
    assert (status, trigger, error) == (RunStatus.QUEUED, RunTrigger.MANUAL, None)
    assert response.headers["Location"] == f"/models/training/{run_id}"
    assert queued_tasks(settings) == [("deepscreen.retrain", ["manual", run_id])]
    [(who, target, _, after)] = audited(dbs, "training.start")
    assert target == str(run_id) and after == {"status": "queued", "trigger": "manual"}
    admin_id = dbs.scalar(select(User.id).where(User.username == who))
    dbs.rollback()
    assert requested_by == admin_id
    page = admin.get(f"/models/training/{run_id}").text
    assert "queued: the training worker starts it when free" in page
    row = admin.get("/models/training").text
    assert f'<tr data-run="{run_id}">' in row and who in row
    # And while it is queued, or running, no second run starts
    for state in (RunStatus.QUEUED, RunStatus.RUNNING):
        dbs.get_one(TrainingRun, run_id).status = state
        dbs.commit()
        refused = post(admin, "/models/training/start")
        assert (
            f"Run #{run_id} is already {state.value}" in admin.get(refused.headers["Location"]).text
        )
        assert len(runs(dbs)) == 1 and len(queued_tasks(settings)) == 1
    # Once it finished, the next one may start
    finished = dbs.get_one(TrainingRun, run_id)
    finished.status, finished.started_at, finished.finished_at = (
        RunStatus.REFUSED,
        utcnow(),
        utcnow(),
    )
    dbs.commit()
    post(admin, "/models/training/start")
    assert [r[1] for r in runs(dbs)] == [RunStatus.REFUSED, RunStatus.QUEUED]
    assert len(queued_tasks(settings)) == 2


def unconfigured_admin(
    tmp_path: Path, settings: Settings, make_user: Callable[..., User], **overrides: Any
) -> FlaskClient:
    """An admin logged in to an app on the same database with other settings."""
    other = make_settings(tmp_path, database_url=settings.database_url, **overrides)
    client = create_app(other, TESTING=True).test_client()
    user = make_user("root", Role.ADMIN)
    assert login(client, user.username).status_code == 302
    return client


def test_retrain_now_is_refused_when_retraining_is_not_configured(
    tmp_path: Path, settings: Settings, make_user: Callable[..., User], dbs: Session
) -> None:
    client = unconfigured_admin(tmp_path, settings, make_user, retrain_data=())
    page = client.get("/models/training").text
    assert "Retraining is not configured" in page and "disabled" in page
    response = post(client, "/models/training/start")
    followed = client.get(response.headers["Location"]).text
    assert "Retraining is not configured: set DEEPSCREEN_RETRAIN_DATA." in followed
    assert runs(dbs) == [] and queued_tasks(settings) == []


def test_an_unreachable_broker_fails_the_run_instead_of_leaving_it_queued(
    tmp_path: Path, settings: Settings, make_user: Callable[..., User], dbs: Session
) -> None:
    # Given a broker nobody listens on
    client = unconfigured_admin(
        tmp_path, settings, make_user, retrain_data=RETRAIN_DATA, broker_url="redis://127.0.0.1:9/0"
    )
    # When an admin asks for a run
    response = post(client, "/models/training/start")
    # Then the run is failed with the reason, and does not block the next attempt
    [(run_id, status, _, _, error)] = runs(dbs)
    assert (status, error) == (RunStatus.FAILED, BROKER_DOWN)
    assert "broker is unreachable" in client.get(response.headers["Location"]).text
    assert "127.0.0.1:9" not in client.get(f"/models/training/{run_id}").text


def test_durations_read_like_a_human_wrote_them() -> None:
    start = utcnow()
    run = TrainingRun(trigger=RunTrigger.MANUAL, started_at=start)
    assert duration(run, now=start + timedelta(seconds=7)) == "7 s"
    run.finished_at = start + timedelta(minutes=3, seconds=5)
    assert duration(run) == "3 min 05 s"
    run.finished_at = start + timedelta(hours=1, minutes=2)
    assert duration(run) == "1 h 02 min"
    assert duration(TrainingRun(trigger=RunTrigger.MANUAL)) == ""
