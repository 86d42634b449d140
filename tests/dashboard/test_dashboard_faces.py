"""Faces and ``no_face`` in the dashboard, on images classified by the worker's own
batch function with a model that has a face stage: the label filter, the queue policy
``DEEPSCREEN_REVIEW_NO_FACE``, the read API (checked against its OpenAPI document),
the stats page, and the face boxes drawn on the item page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from dashboard_helpers import Seeded
from flask import Flask
from flask.testing import FlaskClient
from model_variants import model_variant
from sample_images import SHARED_DATA, no_face_images, shared_images
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_dashboard_api import Api, issue

from deepscreen.commands.ingest import ingest
from deepscreen.config import Settings
from deepscreen.db.models import Image, Prediction
from deepscreen.db.moderation import ReviewReason, ReviewState, Role, User, Verdict
from deepscreen.faces import FaceStage
from deepscreen.inference import NO_FACE, Classifier
from deepscreen.storage import LocalStore
from worker.classify import classify_batch
from worker.runtime import Runtime

requires_shared = pytest.mark.skipif(
    not (SHARED_DATA / "MANIFEST.csv").is_file(),
    reason=f"../shared/data is absent ({SHARED_DATA}): no real face photos to detect",
)

Classify = Callable[..., dict[str, int]]


def no_face_files() -> dict[str, bytes]:
    files = no_face_images()
    return {key: files[key] for key in ("noise.png", "flat.png")}


@pytest.fixture(scope="module")
def face_model(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    folder = model_variant(tmp_path_factory.mktemp("face") / "m", pad=72, face_stage=FaceStage())
    return Classifier(folder, num_threads=1, max_batch=4)


@pytest.fixture
def classify(settings: Settings, face_model: Classifier, tmp_path: Path) -> Iterator[Classify]:
    """``classify(files, **settings_changes)``: the files in a bucket of their own,
    registered and classified by the face model as a worker would; ids by key."""
    runtimes: list[Runtime] = []
    counter = iter(range(100))

    def run(files: dict[str, bytes], **changes: object) -> dict[str, int]:
        folder = tmp_path / f"faces{next(counter)}"
        folder.mkdir()
        for key, data in files.items():
            (folder / key).write_bytes(data)
        runtime = Runtime(replace(settings, **changes), classifier=face_model)
        runtimes.append(runtime)
        ids: list[int] = []
        ingest(
            LocalStore(folder),
            settings=runtime.settings,
            session_factory=runtime.session_factory,
            enqueue=lambda new: ids.extend(new) or 0,
        )
        outcome = classify_batch(ids, runtime=runtime)
        assert sorted(outcome.classified) == sorted(ids), outcome
        with runtime.session_factory() as session:
            return {
                image.key: image.id
                for image in session.scalars(select(Image).where(Image.id.in_(ids)))
            }

    yield run
    for runtime in runtimes:
        runtime.close()


@pytest.fixture
def api(app: Flask, dbs: Session, make_user: Callable[..., User]) -> Api:
    return Api(app.test_client(), issue(dbs, make_user("reader", Role.VIEWER)))


def listed(page: str) -> set[int]:
    """Image ids of the rows of a queue or image list page."""
    return {int(i) for i in re.findall(r'<tr class="row"[^>]*data-image-id="(\d+)"', page)}


def test_the_label_filter_lists_no_face_verdicts_only(
    classify: Classify, seed: Callable[..., Seeded], moderator: FlaskClient
) -> None:
    # Given two images without a face (face model) and three real/fake verdicts
    no_face = classify(no_face_files())
    others = seed([0.1, 0.6, 0.9])
    # When the image list is filtered on the no_face label
    page = moderator.get("/images", query_string={"label": NO_FACE})
    # Then it lists exactly the two, with no score, and offers the label in its filter
    assert page.status_code == 200
    assert listed(page.text) == set(no_face.values())
    assert '<option value="no_face" selected>' in page.text
    assert page.text.count('<td class="num">—</td>') == 2
    # And the other labels still filter as before
    everything = listed(moderator.get("/images").text)
    assert everything == set(no_face.values()) | set(others.image_ids)
    fakes = listed(moderator.get("/images", query_string={"label": "fake"}).text)
    assert fakes and not fakes & set(no_face.values())


@pytest.mark.parametrize(
    ("policy", "queued", "reason"),
    [("review", True, "no_face"), ("audit", True, "audit"), ("skip", False, None)],
)
def test_the_review_queue_follows_the_no_face_policy(
    classify: Classify,
    moderator: FlaskClient,
    dbs: Session,
    policy: str,
    queued: bool,
    reason: str | None,
) -> None:
    # Given DEEPSCREEN_REVIEW_NO_FACE=policy (audit at a rate of 1: every one drawn)
    ids = classify(no_face_files(), review_no_face=policy, review_audit_rate=1.0)
    # When the review queue (open items) is opened
    page = moderator.get("/")
    # Then the no_face items are in it, or not, as the policy says, with its reason
    assert (listed(page.text) == set(ids.values())) is queued
    assert listed(page.text) <= set(ids.values())
    if queued:
        by_reason = listed(moderator.get("/", query_string={"reason": reason}).text)
        assert by_reason == set(ids.values())
    verdicts = dbs.scalars(select(Verdict).where(Verdict.image_id.in_(ids.values()))).all()
    assert {(v.state, v.reason) for v in verdicts} == {
        (ReviewState.OPEN if queued else ReviewState.NONE, ReviewReason(reason) if reason else None)
    }


def test_the_api_returns_no_face_with_its_reason_and_faces(
    classify: Classify, api: Api, seed: Callable[..., Seeded]
) -> None:
    # Given a no_face image and a real/fake verdict from a model without a face stage
    ids = classify({"noise.png": no_face_files()["noise.png"]})
    seed([0.2])
    # When the list is filtered on the label (every answer is checked against OpenAPI)
    items = api.get("/images", label=NO_FACE).get_json()["items"]
    # Then the verdict says no_face, has no score, a reason and an empty face list
    assert [i["id"] for i in items] == [ids["noise.png"]]
    verdict = items[0]["verdict"]
    assert (verdict["model_label"], verdict["final_label"], verdict["score"]) == (
        NO_FACE,
        NO_FACE,
        None,
    )
    assert "no face" in verdict["model_reason"] and verdict["faces"] == []
    # And the image's own page has the prediction with the same
    detail = api.get(f"/images/{ids['noise.png']}").get_json()
    [prediction] = detail["predictions"]
    assert (prediction["label"], prediction["score"], prediction["faces"]) == (NO_FACE, None, [])
    assert prediction["reason"] == verdict["model_reason"]
    # And a model without a face stage reports no face list at all
    others = [i for i in api.get("/images").get_json()["items"] if i["id"] not in ids.values()]
    assert [i["verdict"]["faces"] for i in others] == [None]
    assert [i["verdict"]["model_reason"] for i in others] == [None]


def test_the_stats_page_counts_no_face_verdicts(
    classify: Classify, seed: Callable[..., Seeded], viewer: FlaskClient
) -> None:
    # Given two no_face verdicts and three scored ones
    classify(no_face_files())
    seed([0.1, 0.2, 0.9])
    # When the stats page is opened
    page = viewer.get("/stats/").text
    # Then no_face has its row in the label distribution, and is outside the histogram
    row = re.search(r'<tr data-label="no_face">(.*?)</tr>', page, re.DOTALL)
    assert row is not None
    assert re.findall(r'<td class="num">(\d+)</td>', row.group(1)) == ["2", "2"]
    assert re.search(r'id="unscored"><span class="num">2</span> verdicts without a score', page)
    histogram = re.search(r'id="score-table">(.*?)</table>', page, re.DOTALL)
    assert histogram is not None
    assert sum(int(n) for n in re.findall(r'<td class="num">(\d+)</td>', histogram.group(1))) == 3


def test_a_no_face_item_says_why_and_can_be_decided(
    classify: Classify, moderator: FlaskClient, dbs: Session
) -> None:
    # Given a no_face image in the queue
    ids = classify({"flat.png": no_face_files()["flat.png"]})
    image_id = ids["flat.png"]
    # When its page is opened
    page = moderator.get(f"/images/{image_id}").text
    # Then it shows the reason, no score and no face box
    assert 'id="model-reason"' in page and "no face of at least" in page
    assert 'id="score">—</span>' in page
    assert 'id="face-count">0 faces found' in page and 'id="faces"' not in page
    # And a moderator can confirm it (a scoreless review) or say what it is
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    response = moderator.post(
        f"/images/{image_id}/decide",
        data={"decision": "override:real", "csrf_token": token.group(1)},
    )
    assert response.status_code == 302
    verdict = dbs.scalars(select(Verdict).where(Verdict.image_id == image_id)).one()
    dbs.refresh(verdict)
    assert (verdict.model_label, verdict.final_label, verdict.state) == (
        NO_FACE,
        "real",
        ReviewState.DECIDED,
    )


@requires_shared
def test_the_item_page_draws_each_face_box_with_its_score(
    classify: Classify, moderator: FlaskClient, dbs: Session
) -> None:
    # Given two face photos from ../shared/data, classified by the face model
    files = shared_images(2)
    assert files is not None
    ids = classify(files)
    for image_id in ids.values():
        image = dbs.get(Image, image_id)
        prediction = dbs.scalars(select(Prediction).where(Prediction.image_id == image_id)).one()
        assert image is not None and prediction.faces
        dbs.commit()  # SQLite: let the page's request write
        # When its page is opened
        page = moderator.get(f"/images/{image_id}").text
        # Then an SVG in the image's own pixel size holds one box per face, at its place
        svg = re.search(
            r'<svg class="faces" id="faces" viewBox="([^"]+)"(.*?)</svg>', page, re.DOTALL
        )
        assert svg is not None
        assert svg.group(1) == f"0 0 {image.width} {image.height}"
        boxes = re.findall(
            r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg.group(2)
        )
        assert len(boxes) == len(prediction.faces)
        for face, box in zip(prediction.faces, boxes, strict=True):
            x, y, w, h = (float(v) for v in box)
            assert (x, y) == pytest.approx((face["x0"], face["y0"]), abs=0.06)
            assert (w, h) == pytest.approx(
                (face["x1"] - face["x0"], face["y1"] - face["y0"]), abs=0.1
            )
        # And each box is labelled with its face's score
        labels = re.findall(r"<text [^>]*>([^<]+)</text>", svg.group(2))
        assert labels == [f"{face['score']:.3f}" for face in prediction.faces]
        assert f'id="face-count">{len(prediction.faces)} face' in page
