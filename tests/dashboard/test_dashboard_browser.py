"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright
(no browser download), against the app served on a free loopback port.

A moderator logs in, works through the queue with the keyboard, overrides one item,
flags one, confirms one, and finds all three in the audit log. Screenshots of the
queue, an item and the stats page go to the test's folder, and to docs/screenshots/
when DEEPSCREEN_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard_helpers import PASSWORD, Seeded
from flask import Flask
from services import free_port, unavailable
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from deepscreen.db.moderation import AuditEvent, ReviewState, Role, User, Verdict

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture
def live_url(app: Flask) -> Iterator[str]:
    """The app served by a threaded WSGI server on a free port."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        unavailable("Chromium is not installed (Debian package `chromium`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


def shoot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    if os.environ.get("DEEPSCREEN_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / f"{name}.png")


def state_of(dbs: Session, image_id: int) -> Verdict:
    dbs.expire_all()
    verdict = dbs.scalar(select(Verdict).where(Verdict.image_id == image_id))
    assert verdict is not None
    dbs.commit()  # end the read: SQLite would hold its lock against the server
    return verdict


def test_a_moderator_works_through_the_queue_with_the_keyboard(
    live_url: str,
    browser: Any,
    seed: Callable[..., Seeded],
    make_user: Callable[..., User],
    dbs: Session,
    tmp_path: Path,
) -> None:
    # Given a queue of five items and a moderator
    ids = seed(
        [0.52, 0.58, 0.93, 0.97, 0.40, 0.05],
        keys=[f"incoming/photo-{i}.png" for i in range(6)],
    ).image_ids
    make_user("maria", Role.MODERATOR)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(15_000)

    # When she logs in
    page.goto(f"{live_url}/")
    assert "/login" in page.url
    page.fill("#username", "maria")
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_selector("#queue tr.row")
    # Then the queue is ordered by priority (nearest the threshold first)
    rows = page.eval_on_selector_all("#queue tr.row", "rs => rs.map(r => +r.dataset.imageId)")
    assert rows == [ids[0], ids[1], ids[4], ids[3], ids[2]]
    shoot(page, "queue", tmp_path)

    # When she moves down and back up with j/k and opens the first item with Enter
    page.keyboard.press("j")
    page.keyboard.press("k")
    assert page.get_attribute("#queue tr.row.selected", "data-image-id") == str(ids[0])
    page.keyboard.press("Enter")
    page.wait_for_selector("#item")
    assert page.get_attribute("#item", "data-image-id") == str(ids[0])
    shoot(page, "item", tmp_path)

    # ... overrides it to real with "r": the next item opens
    page.keyboard.press("r")
    page.wait_for_url(f"**/images/{ids[1]}**")
    first = state_of(dbs, ids[0])
    assert (first.state, first.final_label) == (ReviewState.DECIDED, "real")

    # ... flags the next as misclassified with "x"
    page.keyboard.press("x")
    page.wait_for_url(f"**/images/{ids[4]}**")
    second = state_of(dbs, ids[1])
    assert second.flagged and second.flag_label == "real"

    # ... skips one with "j", then confirms the one after with "c"
    page.keyboard.press("j")
    page.wait_for_url(f"**/images/{ids[3]}**")
    page.keyboard.press("c")
    page.wait_for_url(f"**/images/{ids[2]}**")
    assert state_of(dbs, ids[3]).final_label == "fake"
    assert state_of(dbs, ids[4]).state is ReviewState.OPEN

    # ... and reveals the blurred image with "v"
    page.keyboard.press("v")
    assert "revealed" in (page.get_attribute("#reveal-box", "class") or "")

    # Then the audit log lists her three decisions, newest first
    page.goto(f"{live_url}/audit/?user=maria&action=review.")
    actions = page.eval_on_selector_all("#audit td.action", "cs => cs.map(c => c.textContent)")
    assert actions == ["review.confirm", "review.flag", "review.override"]
    events = list(dbs.scalars(select(AuditEvent).where(AuditEvent.action.like("review.%"))))
    dbs.commit()
    assert {e.target_id for e in events} == {str(ids[0]), str(ids[1]), str(ids[3])}

    # And the stats page renders its charts
    page.goto(f"{live_url}/stats/")
    assert page.locator("svg[role=img]").count() >= 3
    shoot(page, "stats", tmp_path)
    page.close()
