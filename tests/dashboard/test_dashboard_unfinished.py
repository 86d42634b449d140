"""Images without a verdict in the dashboard (issue 14, item 10): the image list's
``failed`` and ``no_verdict`` states with each image's reason, their count on the stats
page, and the admins' retry, which re-queues them through the classify task."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from api_client import queued_tasks
from dashboard_helpers import Seeded, token_of
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from deepscreen.config import Settings
from deepscreen.db import queries
from deepscreen.db.base import utcnow
from deepscreen.db.models import Image, ImageSource, ImageStatus
from deepscreen.db.moderation import AuditEvent
from deepscreen.storage import ObjectInfo
from deepscreen.taskqueue import CLASSIFY_PENDING

UNDECODABLE = "undecodable: cannot identify image file 'broken.jpg'"


@dataclass
class Unfinished:
    failed: int
    gave_up: int
    queued: int
    processing: int
    scored: list[int]


@pytest.fixture
def unfinished(dbs: Session, seed: Callable[..., Seeded]) -> Unfinished:
    """Two scored images with verdicts, and four without one: two failed (an undecodable
    file, out of attempts), one queued, one being classified."""
    scored = seed([0.2, 0.9]).image_ids
    now = utcnow()
    keys = ["broken.jpg", "loops.png", "waiting.png", "busy.png"]
    objects = [ObjectInfo("file:///srv/in", key, f"etag-{key}", 10, now) for key in keys]
    ids = queries.register_images(
        session=dbs, objects=objects, source=ImageSource.SCAN, now=now - timedelta(hours=1)
    )
    images = {image.key: image for image in queries.get_images(session=dbs, ids=ids)}
    for key, status, attempts, reason in (
        ("broken.jpg", ImageStatus.FAILED, 1, UNDECODABLE),
        ("loops.png", ImageStatus.FAILED, 3, "gave up after 3 attempts"),
        ("busy.png", ImageStatus.PROCESSING, 1, None),
    ):
        image = images[key]
        image.status, image.attempts, image.failure_reason = status, attempts, reason
        image.finished_at = now if status is ImageStatus.FAILED else None
    dbs.commit()
    return Unfinished(*ids, scored=scored)


def listed(client: FlaskClient, query: str) -> dict[int, str]:
    """Image id -> reason cell of the image list's rows for ``query``."""
    page = client.get(f"/images?{query}")
    assert page.status_code == 200, page.text
    rows = re.findall(
        r'data-image-id="(\d+)".*?<td class="reason">([^<]*)</td>', page.text, re.DOTALL
    )
    return {int(i): reason for i, reason in rows}


def test_failed_and_unverdicted_images_are_listed_with_their_reasons(
    viewer: FlaskClient, unfinished: Unfinished
) -> None:
    # When anyone lists the failed images
    failed = listed(viewer, "state=failed")
    # Then both failed ones are there, newest first, each with its stored reason
    assert list(failed) == [unfinished.gave_up, unfinished.failed]
    assert failed[unfinished.failed] == UNDECODABLE.replace("'", "&#39;")
    assert failed[unfinished.gave_up] == "gave up after 3 attempts"
    # And "no verdict" adds the queued and the processing ones, never a scored image
    waiting = listed(viewer, "state=no_verdict")
    assert set(waiting) == {
        unfinished.failed,
        unfinished.gave_up,
        unfinished.queued,
        unfinished.processing,
    }
    assert waiting[unfinished.queued] == "queued, waiting for a worker"
    assert waiting[unfinished.processing] == "being classified (attempt 1)"
    # And the filters narrow them (all were registered an hour ago by a scan)
    assert listed(viewer, "state=failed&source=api") == {}
    assert set(listed(viewer, "state=no_verdict&source=scan")) == set(waiting)
    # And viewers get no retry controls
    assert 'id="retry-selected"' not in viewer.get("/images?state=failed").text


def test_the_stats_page_counts_failed_and_unverdicted_images(
    viewer: FlaskClient, unfinished: Unfinished
) -> None:
    page = viewer.get("/stats/").text
    assert '<span class="num">2</span> failed' in page
    assert '<span class="num">4</span> without a verdict' in page
    assert "1 queued, 1 being classified" in page
    assert 'href="/images?state=failed"' in page


def test_an_admin_retries_failed_images_through_the_classify_task(
    admin: FlaskClient,
    moderator: FlaskClient,
    unfinished: Unfinished,
    dbs: Session,
    settings: Settings,
) -> None:
    # Given a moderator, who may not retry
    form = {"image_id": [str(unfinished.failed)], "state": "failed"}
    refused = moderator.post("/images/retry", data={**form, "csrf_token": token_of(moderator)})
    assert refused.status_code == 403
    assert queued_tasks(settings) == []
    # When an admin retries the undecodable image, the processing one and a scored one
    form["image_id"] += [str(unfinished.processing), str(unfinished.scored[0])]
    response = admin.post("/images/retry", data={**form, "csrf_token": token_of(admin)})
    # Then only the failed one is re-queued: attempts reset, its reason cleared
    assert response.status_code == 302
    assert response.location.endswith("/images?state=failed")
    image = dbs.get(Image, unfinished.failed)
    assert image is not None
    assert (image.status, image.attempts, image.failure_reason) == (ImageStatus.QUEUED, 0, None)
    busy = dbs.get(Image, unfinished.processing)
    assert busy is not None and busy.status is ImageStatus.PROCESSING
    # And a classify task for it waits in the broker, sent by name
    assert queued_tasks(settings) == [(CLASSIFY_PENDING, [[unfinished.failed]])]
    # And the audit log keeps the reason it had
    event = dbs.scalar(select(AuditEvent).where(AuditEvent.action == "image.retry"))
    assert event is not None and event.before is not None
    assert event.before["reasons"] == {str(unfinished.failed): UNDECODABLE}
    dbs.commit()


def test_retry_all_failed_requeues_every_failed_image(
    admin: FlaskClient, unfinished: Unfinished, dbs: Session, settings: Settings
) -> None:
    data = {"all_failed": "1", "state": "failed", "csrf_token": token_of(admin)}
    page = admin.post("/images/retry", data=data, follow_redirects=True)
    assert "2 images re-queued (1 classify task sent)" in page.text
    assert queued_tasks(settings) == [
        (CLASSIFY_PENDING, [sorted([unfinished.failed, unfinished.gave_up])])
    ]
    statuses = dbs.scalars(
        select(Image.status).where(Image.id.in_([unfinished.failed, unfinished.gave_up]))
    )
    assert set(statuses) == {ImageStatus.QUEUED}
    dbs.commit()
    # And the failed list is empty now
    assert listed(admin, "state=failed") == {}
