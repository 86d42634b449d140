"""The review queue, the item page, decisions, claims, bulk actions and the image proxy."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

from dashboard_helpers import Seeded, token_of
from flask.testing import FlaskClient
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from deepscreen.db.base import utcnow
from deepscreen.db.moderation import AuditEvent, Review, ReviewState, Role, Verdict

Seed = Callable[..., Seeded]


def queue_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-image-id="(\d+)"', html)]


def verdict(dbs: Session, image_id: int) -> Verdict:
    dbs.expire_all()
    row = dbs.scalar(select(Verdict).where(Verdict.image_id == image_id))
    assert row is not None
    dbs.commit()  # end the read: SQLite would hold its lock against the app's requests
    return row


def decide(client: FlaskClient, image_id: int, decision: str, **form: str):  # type: ignore[no-untyped-def]
    token = token_of(client, f"/images/{image_id}")
    return client.post(
        f"/images/{image_id}/decide", data={"decision": decision, "csrf_token": token, **form}
    )


def test_the_queue_holds_what_the_policy_sends_highest_priority_first(
    seed: Seed, viewer: FlaskClient
) -> None:
    # Given verdicts: a confident real, two uncertain ones and two fakes
    ids = seed([0.10, 0.50, 0.62, 0.90, 0.99]).image_ids
    # Then the queue holds the uncertain ones (nearest the threshold first), then fakes
    page = viewer.get("/")
    assert page.status_code == 200
    assert queue_ids(page.text) == [ids[1], ids[2], ids[4], ids[3]]
    assert "4 items" in page.text
    # ... and the image list shows everything, newest first
    assert sorted(queue_ids(viewer.get("/images").text)) == sorted(ids)


def test_filters_narrow_the_queue_and_hostile_values_are_harmless(
    seed: Seed, viewer: FlaskClient, dbs: Session
) -> None:
    ids = seed([0.10, 0.50, 0.62, 0.90, 0.99]).image_ids
    assert queue_ids(viewer.get("/?score_min=0.8").text) == [ids[4], ids[3]]
    assert queue_ids(viewer.get("/images?label=fake").text) == [ids[4], ids[3], ids[2], ids[1]]
    assert queue_ids(viewer.get("/images?label=real").text) == [ids[0]]
    # An SQL-ish label matches nothing; an SQL-ish score is ignored with a message
    assert queue_ids(viewer.get("/?label=%27%20OR%201%3D1%20--").text) == []
    hostile = viewer.get("/?score_min=1;DROP%20TABLE%20images&state=open")
    assert hostile.status_code == 200 and "ignored score_min" in hostile.text
    assert dbs.execute(text("SELECT count(*) FROM images")).scalar() == 5
    dbs.commit()


def test_keyset_pages_cover_the_queue_once_and_go_back(seed: Seed, viewer: FlaskClient) -> None:
    ids = seed([0.9 + i / 10_000 for i in range(120)]).image_ids
    seen: list[int] = []
    url = "/"
    pages = []
    while url:
        html = viewer.get(url).text
        pages.append(queue_ids(html))
        seen += pages[-1]
        match = re.search(r'href="([^"]+)" rel="next"', html)
        url = match.group(1).replace("&amp;", "&") if match else ""
    assert [len(p) for p in pages] == [50, 50, 20]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == 120
    # Highest score first among fakes
    assert seen == sorted(ids, reverse=True)
    html = viewer.get(url or "/").text  # page 1 again
    second = re.search(r'href="([^"]+)" rel="next"', html)
    assert second
    page2 = viewer.get(second.group(1).replace("&amp;", "&")).text
    back = re.search(r'href="([^"]+)" rel="prev"', page2)
    assert back and queue_ids(viewer.get(back.group(1).replace("&amp;", "&")).text) == pages[0]


def test_a_moderator_overrides_and_the_history_and_audit_log_say_so(
    seed: Seed, moderator: FlaskClient, dbs: Session
) -> None:
    ids = seed([0.55, 0.95]).image_ids
    # When the moderator says the uncertain "fake" is real
    response = decide(moderator, ids[0], "override:real")
    # Then the verdict is decided with the human label, and the next item opens
    assert response.status_code == 302
    assert response.headers["Location"].startswith(f"/images/{ids[1]}")
    v = verdict(dbs, ids[0])
    assert (v.state, v.human_label, v.final_label, v.model_label) == (
        ReviewState.DECIDED,
        "real",
        "real",
        "fake",
    )
    assert v.claimed_by is None
    [review] = dbs.scalars(select(Review).where(Review.image_id == ids[0]))
    assert (review.action.value, review.label) == ("override", "real")
    [event] = dbs.scalars(select(AuditEvent).where(AuditEvent.action == "review.override"))
    assert event.target_id == str(ids[0])
    assert event.before["final_label"] == "fake" and event.after["final_label"] == "real"
    dbs.commit()
    page = moderator.get(f"/images/{ids[0]}").text
    assert 'id="history"' in page and "override" in page


def test_flag_confirm_escalate_and_note(seed: Seed, moderator: FlaskClient, dbs: Session) -> None:
    ids = seed([0.55, 0.95, 0.97, 0.45]).image_ids
    decide(moderator, ids[0], "flag:real")
    v = verdict(dbs, ids[0])
    assert v.flagged and v.flag_label == "real" and v.final_label == "real"
    decide(moderator, ids[1], "confirm")
    assert verdict(dbs, ids[1]).final_label == "fake" and not verdict(dbs, ids[1]).flagged
    decide(moderator, ids[2], "escalate")
    assert verdict(dbs, ids[2]).state is ReviewState.ESCALATED
    noted = decide(moderator, ids[3], "note", note="looks <b>edited</b> around the eyes")
    assert noted.status_code == 302 and verdict(dbs, ids[3]).state is ReviewState.OPEN
    page = moderator.get(f"/images/{ids[3]}").text
    assert "looks &lt;b&gt;edited&lt;/b&gt; around the eyes" in page
    # A label the model card does not know is refused
    assert decide(moderator, ids[3], "override:cat").status_code == 400


def test_viewers_cannot_decide_and_a_decision_needs_the_csrf_token(
    seed: Seed, viewer: FlaskClient, moderator: FlaskClient
) -> None:
    [image_id] = seed([0.55]).image_ids
    assert 'id="decide"' not in viewer.get(f"/images/{image_id}").text
    assert decide(viewer, image_id, "confirm").status_code == 403
    no_token = moderator.post(f"/images/{image_id}/decide", data={"decision": "confirm"})
    assert no_token.status_code == 400


def test_an_item_being_reviewed_is_claimed_until_the_claim_expires(
    seed: Seed, client_for: Callable[[Role], FlaskClient], dbs: Session
) -> None:
    [image_id] = seed([0.55]).image_ids
    first, second = client_for(Role.MODERATOR), client_for(Role.MODERATOR)
    # Given the first moderator has the item open
    first.get(f"/images/{image_id}")
    # Then the second sees who has it and cannot decide it
    page = second.get(f"/images/{image_id}").text
    assert 'id="claimed-by-other"' in page and 'id="decide"' not in page
    assert decide(second, image_id, "confirm").status_code == 409
    # When the claim expires, the second moderator can take it
    dbs.execute(
        update(Verdict)
        .where(Verdict.image_id == image_id)
        .values(claim_expires_at=utcnow() - timedelta(seconds=1))
    )
    dbs.commit()
    assert decide(second, image_id, "confirm").status_code == 302


def test_object_keys_are_rendered_escaped(seed: Seed, viewer: FlaskClient) -> None:
    [image_id] = seed([0.55], keys=["<script>alert(1)</script>.png"]).image_ids
    for page in (viewer.get("/").text, viewer.get(f"/images/{image_id}").text):
        assert "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in page


def test_bulk_actions_name_the_count_and_refuse_a_changed_selection(
    seed: Seed, moderator: FlaskClient, viewer: FlaskClient, dbs: Session
) -> None:
    ids = seed([0.91, 0.92, 0.93, 0.55, 0.10]).image_ids
    token = token_of(moderator, "/")
    form = {"csrf_token": token, "state": "open", "score_min": "0.9", "action": "override"}
    # Step 1: the confirmation names the count
    ask = moderator.post("/bulk", data={**form, "new_label": "real"})
    assert ask.status_code == 200 and "3 items?" in ask.text
    # A stale or forged selection is refused and asked again
    stale = moderator.post("/bulk", data={**form, "new_label": "real", "confirm_selection": "3"})
    assert "The selection changed: it now has 3 items." in stale.text
    # Step 2: applied to exactly those
    done = moderator.post("/bulk", data=confirmation_form(ask.text))
    assert done.status_code == 302
    assert {verdict(dbs, i).final_label for i in ids[:3]} == {"real"}
    assert verdict(dbs, ids[3]).state is ReviewState.OPEN
    assert dbs.scalar(select(func.count()).select_from(Review)) == 3
    [event] = dbs.scalars(select(AuditEvent).where(AuditEvent.action == "bulk.override"))
    assert event.after == {"label": "real", "applied": 3}
    dbs.commit()
    # Viewers cannot
    assert (
        viewer.post("/bulk", data={**form, "csrf_token": token_of(viewer, "/")}).status_code == 403
    )


def confirmation_form(html: str) -> dict[str, str]:
    """The hidden fields of the bulk confirmation page, as the browser sends them."""
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html))


def test_a_bulk_confirmation_applies_to_the_items_shown_only(
    seed: Seed, moderator: FlaskClient, dbs: Session
) -> None:
    # Given a preview of 3 fakes to override
    ids = seed([0.91, 0.92, 0.93]).image_ids
    form = {"csrf_token": token_of(moderator, "/"), "state": "open", "score_min": "0.9"}
    ask = moderator.post("/bulk", data={**form, "action": "override", "new_label": "real"})
    assert "3 items?" in ask.text
    # When one of them is decided and a new one arrives before the confirmation (same count)
    assert decide(moderator, ids[0], "confirm").status_code == 302
    [newcomer] = seed([0.95]).image_ids
    confirm = moderator.post("/bulk", data=confirmation_form(ask.text))
    # Then nothing is applied and the admin is asked again about the new selection
    assert confirm.status_code == 200, confirm.status_code
    assert "The selection changed" in confirm.text
    assert {verdict(dbs, i).state for i in (ids[1], ids[2], newcomer)} == {ReviewState.OPEN}
    # And confirming the new preview applies to exactly what it showed
    done = moderator.post("/bulk", data=confirmation_form(confirm.text))
    assert done.status_code == 302
    assert {verdict(dbs, i).final_label for i in (ids[1], ids[2], newcomer)} == {"real"}
    assert verdict(dbs, ids[0]).final_label == "fake"


def test_the_image_is_proxied_to_logged_in_users_only(
    seed: Seed,
    viewer: FlaskClient,
    app,
    dbs: Session,  # type: ignore[no-untyped-def]
) -> None:
    seeded = seed([0.55])
    [image_id] = seeded.image_ids
    dbs.execute(text("UPDATE images SET content_type = 'image/png'"))
    dbs.commit()
    response = viewer.get(f"/images/{image_id}/content")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data == (seeded.folder / "img0000.png").read_bytes()
    assert response.headers["Cache-Control"].startswith("private")
    assert app.test_client().get(f"/images/{image_id}/content").status_code == 302
