"""Webhook events from human decisions: ``review.completed`` for every confirm,
override and flag, ``verdict.changed`` when the final label moves, delivered to the
endpoints that want them and sent to the broker by task name after the commit."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from api_client import queued_tasks
from dashboard_helpers import Seeded, login, token_of
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_dashboard_review import decide

from dashboard import create_app
from deepscreen.config import Settings
from deepscreen.db.base import utcnow
from deepscreen.db.moderation import Role, User
from deepscreen.db.webhooks import (
    DeliveryStatus,
    EndpointKind,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

Seed = Callable[..., Seeded]


def endpoint(dbs: Session, event_types: list[str], **fields: Any) -> int:
    row = WebhookEndpoint(
        url="http://127.0.0.1:9/hook",
        secret="whsec_" + "A" * 44,
        event_types=event_types,
        created_at=utcnow(),
        **fields,
    )
    dbs.add(row)
    dbs.commit()
    return row.id


def events(dbs: Session) -> list[tuple[str, dict[str, Any], list[int]]]:
    """(type, data, endpoint ids delivered to) of every event, oldest first."""
    dbs.expire_all()
    out = []
    for event in dbs.scalars(select(WebhookEvent).order_by(WebhookEvent.id)):
        targets = dbs.scalars(
            select(WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.event_id == event.id)
            .order_by(WebhookDelivery.endpoint_id)
        )
        out.append((event.type, event.payload["data"], list(targets)))
    dbs.commit()
    return out


def test_an_override_emits_review_completed_and_verdict_changed(
    seed: Seed, moderator: FlaskClient, dbs: Session, settings: Settings
) -> None:
    seeded = seed([0.7, 0.2])
    image_id = seeded.image_ids[0]  # the model said fake
    # Given a subscription to both human events, one to model verdicts only, and an
    # inactive one
    both = endpoint(dbs, ["review.completed", "verdict.changed"])
    endpoint(dbs, ["verdict.created"])
    endpoint(dbs, ["review.completed"], active=False)
    # When a moderator overrides the model
    assert decide(moderator, image_id, "override:real").status_code == 302
    # Then both events exist, delivered to the one endpoint that wants them
    (completed, data, to), (changed, change, to2) = events(dbs)
    assert (completed, changed) == ("review.completed", "verdict.changed")
    assert to == to2 == [both]
    assert data["image_id"] == image_id and data["key"] == "img0000.png"
    assert data["bucket"] == seeded.folder.as_uri()
    assert (data["action"], data["label"], data["final_label"], data["model_label"]) == (
        "override",
        "real",
        "real",
        "fake",
    )
    assert data["score"] == 0.7 and data["model_version"]["sha256"] == "ab" * 32
    assert data["reviewer"].startswith("moderator") and data["decided_at"]
    assert change["before"] == {"final_label": "fake"} and change["after"] == {
        "final_label": "real"
    }
    # And the deliveries went to the broker by task name, after the commit
    delivery_ids = sorted(dbs.scalars(select(WebhookDelivery.id)))
    dbs.commit()
    assert sorted(args[0] for name, args in queued_tasks(settings)) == delivery_ids
    assert {name for name, _ in queued_tasks(settings)} == {"deepscreen.deliver_webhook"}


def test_confirm_and_flag_complete_a_review_escalate_and_note_do_not(
    seed: Seed, moderator: FlaskClient, dbs: Session
) -> None:
    ids = seed([0.95, 0.55, 0.97, 0.45]).image_ids
    endpoint(dbs, ["review.completed", "verdict.changed"])
    decide(moderator, ids[0], "confirm")
    assert [(t, d["action"]) for t, d, _ in events(dbs)] == [("review.completed", "confirm")]
    decide(moderator, ids[2], "escalate")
    decide(moderator, ids[3], "note", note="hmm")
    assert len(events(dbs)) == 1
    # A flag that corrects the model is a completed review and a changed verdict
    decide(moderator, ids[1], "flag:real")
    assert [(t, d["action"]) for t, d, _ in events(dbs)][1:] == [
        ("review.completed", "flag"),
        ("verdict.changed", "flag"),
    ]
    # Overriding back to the model's label changes the verdict again
    decide(moderator, ids[1], "override:fake")
    (_, data, _), (kind, change, _) = events(dbs)[3:]
    assert kind == "verdict.changed" and change["after"] == {"final_label": "fake"}
    assert data["final_label"] == "fake"


def test_a_callback_hears_only_its_own_image(
    seed: Seed, moderator: FlaskClient, dbs: Session
) -> None:
    ids = seed([0.7, 0.8]).image_ids
    callback = endpoint(
        dbs,
        ["verdict.created", "review.completed", "verdict.changed"],
        kind=EndpointKind.CALLBACK,
        image_id=ids[1],
    )
    decide(moderator, ids[0], "override:real")
    assert events(dbs) == []
    decide(moderator, ids[1], "override:real")
    assert [(t, to) for t, _, to in events(dbs)] == [
        ("review.completed", [callback]),
        ("verdict.changed", [callback]),
    ]


def test_a_bulk_override_emits_per_item_and_nothing_without_subscribers(
    seed: Seed, moderator: FlaskClient, dbs: Session
) -> None:
    ids = seed([0.91, 0.92, 0.93, 0.94]).image_ids
    form = {"csrf_token": token_of(moderator, "/"), "state": "open", "action": "override"}
    # With no endpoint, a decision writes no event
    decide(moderator, ids[3], "confirm")
    assert events(dbs) == []
    endpoint(dbs, ["verdict.changed"])
    ask = moderator.post("/bulk", data={**form, "new_label": "real"})
    confirm = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', ask.text))
    done = moderator.post("/bulk", data=confirm)
    assert done.status_code == 302
    emitted = events(dbs)
    assert [t for t, _, _ in emitted] == ["verdict.changed"] * 3
    assert sorted(d["image_id"] for _, d, _ in emitted) == ids[:3]


def test_with_the_broker_down_the_decision_stands_and_deliveries_stay_pending(
    seed: Seed, settings: Settings, dbs: Session, make_user: Callable[..., User]
) -> None:
    ids = seed([0.7]).image_ids
    endpoint(dbs, ["review.completed"])
    # Given a dashboard whose broker cannot be reached
    down = create_app(
        dataclasses.replace(settings, broker_url="redis://127.0.0.1:1/0"), TESTING=True
    )
    client = down.test_client()
    login(client, make_user("mod-down", Role.MODERATOR).username)
    assert decide(client, ids[0], "confirm").status_code == 302
    # Then the delivery is pending and due, for the periodic dispatcher to send
    [delivery] = dbs.scalars(select(WebhookDelivery))
    assert delivery.status is DeliveryStatus.PENDING and delivery.next_attempt_at is not None
    dbs.commit()
