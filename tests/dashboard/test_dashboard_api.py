"""The read API: token auth, listing with the queue's filters and keyset pages, one
image with its reviews, models, harmless SQL-ish input, and the OpenAPI document,
which every response in these tests is checked against."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from dashboard_helpers import Seeded
from flask import Flask
from flask.testing import FlaskClient
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_schema_validator import validate as validate_schema
from openapi_spec_validator import validate as validate_spec
from sqlalchemy import func, inspect, select, update
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from dashboard import openapi
from dashboard.accounts import hash_token, mint_token
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource
from deepscreen.db.moderation import Action, ApiToken, Review, ReviewState, Role, User, Verdict
from deepscreen.storage import ObjectInfo

SCORES = [0.1, 0.3, 0.45, 0.55, 0.7, 0.95]


class Api:
    """A test client that checks every JSON answer against the OpenAPI document:
    the path and status must be documented and the body must match the schema."""

    def __init__(self, client: FlaskClient, token: str | None = None) -> None:
        self.client, self.token = client, token
        self.doc = openapi.document()

    def get(self, path: str, token: str | None = "default", **params: Any) -> TestResponse:
        token = self.token if token == "default" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.client.get("/api/v1" + path, query_string=params, headers=headers)
        check_response(self.doc, path, response)
        return response


def check_response(
    doc: dict[str, Any], path: str, response: TestResponse, method: str = "get"
) -> None:
    """The status is documented for ``method`` on ``path`` and the body fits its schema
    (a documented answer without content, such as 204, has no body)."""
    template = next(t for t in doc["paths"] if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", t), path))
    responses = doc["paths"][template][method]["responses"]
    assert str(response.status_code) in responses, (method, path, response.status_code)
    documented = responses[str(response.status_code)]
    if "content" not in documented:
        assert not response.data, response.text
        return
    assert response.is_json, response.text
    schema = documented["content"]["application/json"]["schema"]
    validate_schema(
        response.get_json(),
        {**schema, "components": doc["components"]},
        cls=OAS31Validator,
        format_checker=oas31_format_checker,
    )


def issue(dbs: Session, user: User, **fields: Any) -> str:
    """A token for ``user``, stored as the account page would (hash only)."""
    token, token_hash = mint_token()
    dbs.add(
        ApiToken(user_id=user.id, name="test", token_hash=token_hash, created_at=utcnow(), **fields)
    )
    dbs.commit()
    return token


@pytest.fixture
def reader(make_user: Callable[..., User]) -> User:
    return make_user("reader", Role.VIEWER)


@pytest.fixture
def api(app: Flask, dbs: Session, reader: User) -> Api:
    return Api(app.test_client(), issue(dbs, reader))


@pytest.fixture
def seeded(seed: Callable[..., Seeded], dbs: Session) -> Seeded:
    """Six predicted images and one still queued (no verdict), registered last."""
    seeded = seed(SCORES)
    now = utcnow()
    [queued] = queries.register_images(
        session=dbs,
        objects=[ObjectInfo("file:///elsewhere", "new.png", "etag-new", 10, now)],
        source=ImageSource.EVENT,
    )
    dbs.commit()
    seeded.image_ids.append(queued)
    return seeded


def ids(response: TestResponse) -> list[int]:
    return [item["id"] for item in response.get_json()["items"]]


def test_requests_without_a_live_token_are_refused(
    api: Api, dbs: Session, make_user: Callable[..., User], reader: User
) -> None:
    assert api.get("/images").status_code == 200
    refused = [
        api.get("/images", token=None),
        api.get("/images", token="ds_not-a-token"),
        api.get("/images", token=issue(dbs, reader, revoked_at=utcnow())),
    ]
    # Given a user who is deactivated after their token was made
    gone = make_user("gone", Role.ADMIN)
    token = issue(dbs, gone)
    assert api.get("/models", token=token).status_code == 200
    dbs.get_one(User, gone.id).active = False
    dbs.commit()
    refused.append(api.get("/models", token=token))
    refused.append(api.client.get("/api/v1/images", headers={"Authorization": "Basic eDp5"}))
    for response in refused:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in response.get_json()


def test_the_token_is_stored_hashed_and_last_use_is_written_once_a_minute(
    api: Api, dbs: Session
) -> None:
    assert api.token is not None
    token_hash = hash_token(api.token)

    def last_used() -> datetime | None:
        row = dbs.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))
        assert row is not None and api.token not in (row.token_hash, row.name)
        dbs.commit()  # SQLite: an open transaction here would hold the app's write lock
        return row.last_used_at

    assert last_used() is None
    api.get("/models")
    first = last_used()
    assert first is not None
    api.get("/models")
    assert last_used() == first
    # When the last use is over a minute old, the next request moves it
    dbs.execute(
        update(ApiToken)
        .where(ApiToken.token_hash == token_hash)
        .values(last_used_at=first - timedelta(minutes=2))
    )
    dbs.commit()
    api.get("/models")
    moved = last_used()
    assert moved is not None and moved >= first


def test_a_logged_in_browser_session_reads_the_api(viewer: FlaskClient, seeded: Seeded) -> None:
    response = Api(viewer).get("/images", token=None)
    assert response.status_code == 200 and ids(response) == seeded.image_ids


def test_the_list_has_every_image_with_its_status_and_verdict(api: Api, seeded: Seeded) -> None:
    items = api.get("/images").get_json()["items"]
    assert [i["id"] for i in items] == sorted(seeded.image_ids)
    *predicted, queued = items
    assert queued["status"] == "queued" and queued["verdict"] is None
    assert [i["verdict"]["score"] for i in predicted] == SCORES
    assert all(i["status"] == "done" for i in predicted)
    assert [i["verdict"]["final_label"] for i in predicted] == ["real"] * 3 + ["fake"] * 3
    assert [i["verdict"]["state"] for i in predicted] == ["none", "none"] + ["open"] * 4


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"label": "fake"}, [3, 4, 5]),
        ({"score_min": "0.3", "score_max": "0.7"}, [1, 2, 3, 4]),
        ({"state": "open", "reason": "fake"}, [4, 5]),
        ({"state": "none"}, [0, 1]),
        ({"source": "scan", "label": "real"}, [0, 1, 2]),
        ({"status": "queued"}, [6]),
        ({"status": "done", "flagged": "false"}, [0, 1, 2, 3, 4, 5]),
        ({"since": "2000-01-01", "until": "2000-12-31"}, []),
    ],
)
def test_the_list_takes_the_queue_filters_and_status(
    api: Api, seeded: Seeded, params: dict[str, str], expected: list[int]
) -> None:
    response = api.get("/images", **params)
    assert response.status_code == 200
    assert ids(response) == [seeded.image_ids[i] for i in expected]


def test_model_version_filter(api: Api, seeded: Seeded) -> None:
    assert len(ids(api.get("/images", model_version=seeded.model_version_id))) == len(SCORES)
    assert ids(api.get("/images", model_version=seeded.model_version_id + 1)) == []


def test_keyset_pages_walk_every_image_once_in_id_order(api: Api, seeded: Seeded) -> None:
    seen: list[int] = []
    after = 0
    while True:
        page = api.get("/images", limit=3, after=after).get_json()
        assert page["limit"] == 3 and len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == sorted(seeded.image_ids)
    # A filter holds across pages
    first = api.get("/images", label="fake", limit=2).get_json()
    rest = api.get("/images", label="fake", limit=2, after=first["next_after"]).get_json()
    assert [i["id"] for i in first["items"] + rest["items"]] == seeded.image_ids[3:6]
    assert rest["next_after"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"after": "-1"},
        {"after": "1.5"},
        {"after": str(2**70)},
        {"status": "lost"},
        {"score_min": "2"},
        {"since": "yesterday"},
    ],
)
def test_bad_parameters_are_a_400_naming_them(
    api: Api, seeded: Seeded, params: dict[str, str]
) -> None:
    response = api.get("/images", **params)
    assert response.status_code == 400
    [name] = params
    assert any(name in detail for detail in response.get_json()["details"])


def test_one_image_with_predictions_verdict_and_review_history(
    api: Api, seeded: Seeded, dbs: Session, make_user: Callable[..., User]
) -> None:
    image_id = seeded.image_ids[4]  # the model said fake (0.7)
    mod = make_user("mod", Role.MODERATOR)
    # Given a moderator who noted the image and then overrode it to real
    now = utcnow()
    for minutes, action, label, note in [
        (2, Action.NOTE, None, "<b>look</b>"),
        (1, Action.OVERRIDE, "real", None),
    ]:
        dbs.add(
            Review(
                image_id=image_id,
                user_id=mod.id,
                action=action,
                label=label,
                note=note,
                model_version_id=seeded.model_version_id,
                score=0.7,
                created_at=now - timedelta(minutes=minutes),
            )
        )
    verdict = dbs.scalar(select(Verdict).where(Verdict.image_id == image_id))
    assert verdict is not None
    verdict.human_label = verdict.final_label = "real"
    verdict.state, verdict.decided_at = ReviewState.DECIDED, now
    dbs.commit()

    body = api.get(f"/images/{image_id}").get_json()
    assert body["id"] == image_id and body["status"] == "done" and body["key"] == "img0004.png"
    assert body["verdict"]["model_label"] == "fake" and body["verdict"]["final_label"] == "real"
    assert body["verdict"]["state"] == "decided"
    [prediction] = body["predictions"]
    assert prediction["model_version"] == {
        "id": seeded.model_version_id,
        "name": "test-model",
        "sha256": "ab" * 32,
    }
    assert prediction["score"] == 0.7 and prediction["label"] == "fake"
    assert [(r["user"], r["action"], r["label"], r["note"]) for r in body["reviews"]] == [
        ("mod", "note", None, "<b>look</b>"),
        ("mod", "override", "real", None),
    ]
    # And an image with no verdict yet is fetchable too
    queued = api.get(f"/images/{seeded.image_ids[-1]}").get_json()
    assert queued["verdict"] is None and queued["predictions"] == [] and queued["reviews"] == []


def test_an_unknown_image_is_a_json_404(api: Api, seeded: Seeded) -> None:
    response = api.get(f"/images/{max(seeded.image_ids) + 1}")
    assert response.status_code == 404 and "no image" in response.get_json()["error"]
    # Beyond any 64-bit id, no route matches: a JSON 404 too
    response = api.get(f"/images/{2**64}")
    assert response.status_code == 404 and response.get_json()["error"]


def test_models_lists_every_version(api: Api, seeded: Seeded) -> None:
    [model] = api.get("/models").get_json()["items"]
    assert model["id"] == seeded.model_version_id and model["sha256"] == "ab" * 32
    assert model["threshold"] == 0.5 and model["labels"] == ["real", "fake"]
    assert model["active"] is True  # ensure_model_version activates it


def test_sql_ish_filter_values_are_harmless(api: Api, seeded: Seeded, dbs: Session) -> None:
    # A string filter is a bound parameter: it matches no label, and returns nothing
    injected = api.get("/images", label="' OR 1=1 --")
    assert injected.status_code == 200 and ids(injected) == []
    # A value that must be a number does not parse, and is refused, not run
    for params in (
        {"score_min": "1;DROP TABLE images"},
        {"after": "0) OR (1=1"},
        {"state": "open' OR '1'='1"},
        {"limit": "1; DELETE FROM verdicts"},
    ):
        assert api.get("/images", **params).status_code == 400
    assert api.get("/images/1%20OR%201=1").status_code == 404
    # And nothing was dropped or deleted
    assert len(ids(api.get("/images"))) == len(seeded.image_ids)
    assert inspect(dbs.get_bind()).has_table("images")
    assert dbs.scalar(select(func.count(Image.id))) == len(seeded.image_ids)
    assert dbs.scalar(select(func.count(Verdict.id))) == len(SCORES)


def test_the_openapi_document_is_valid_and_needs_a_login(api: Api) -> None:
    assert api.get("/openapi.json", token=None).status_code == 401
    response = api.get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    validate_spec(doc)
    assert doc["servers"] == [{"url": "/api/v1"}]
    assert {"/images", "/images/{image_id}", "/models", "/openapi.json", "/webhooks"} <= set(
        doc["paths"]
    )
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    assert {"Image", "Verdict", "Review", "Prediction", "Model", "Error"} <= set(schemas)
    assert {"Submission", "Webhook", "Delivery"} <= set(schemas)
    # Every route and method the API blueprints serve is in the document, and no more
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule).removeprefix("/api/v1"), method.lower())
        for r in api.client.application.url_map.iter_rules()
        if r.endpoint.split(".")[0] in ("api", "api_submit", "api_webhooks")
        for method in (r.methods or set()) - {"HEAD", "OPTIONS"}
    }
    documented = {
        (path, method)
        for path, item in doc["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served == documented


def test_images_cannot_be_changed_through_the_api(api: Api, seeded: Seeded, dbs: Session) -> None:
    headers = {"Authorization": f"Bearer {api.token}"}
    for method in ("post", "put", "patch", "delete"):
        response = getattr(api.client, method)(
            f"/api/v1/images/{seeded.image_ids[0]}", headers=headers
        )
        assert response.status_code == 405, method
    assert dbs.scalar(select(func.count(Image.id))) == len(seeded.image_ids)
