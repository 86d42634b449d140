"""Issue 14's dashboard items in a real browser (Chromium, as test_dashboard_browser.py):
the review queue's grid view worked with the keyboard (item 14), failed images found from
the stats page and retried (item 10), and the legibility of the stats, audit and model
pages (item 13). Screenshots go to the test's folder (and docs/screenshots/ with
DEEPSCREEN_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import test_dashboard_browser
import test_dashboard_unfinished
from api_client import queued_tasks
from dashboard_helpers import PASSWORD, Seeded
from sqlalchemy.orm import Session
from test_dashboard_browser import shoot, state_of
from test_dashboard_unfinished import UNDECODABLE, Unfinished

from deepscreen.config import Settings
from deepscreen.db.models import Image, ImageStatus, ModelVersion
from deepscreen.db.moderation import Action, ReviewState, Role, User

# The other modules' fixtures, used here too.
live_url = test_dashboard_browser.live_url
browser = test_dashboard_browser.browser
unfinished = test_dashboard_unfinished.unfinished

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "deepscreen" / "models" / "default"


def logged_in(browser: Any, live_url: str, username: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(15_000)
    page.goto(f"{live_url}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_selector("header.top nav")
    return page


def tile_ids(page: Any, selector: str = "#grid .tile") -> list[int]:
    return page.eval_on_selector_all(selector, "ts => ts.map(t => +t.dataset.imageId)")


def test_a_moderator_decides_a_selection_in_the_grid_with_the_keyboard(
    live_url: str,
    browser: Any,
    seed: Callable[..., Seeded],
    make_user: Callable[..., User],
    dbs: Session,
    tmp_path: Path,
) -> None:
    # Given nine fakes in the queue (fakes are always reviewed) and a moderator
    scores = [0.60, 0.70, 0.80, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95]
    ids = seed(scores, keys=[f"incoming/face-{i}.png" for i in range(9)]).image_ids
    make_user("grace", Role.MODERATOR)
    page = logged_in(browser, live_url, "grace")

    # When she switches the queue to the grid view
    page.goto(f"{live_url}/")
    page.click("#view-grid")
    page.wait_for_selector("#grid .tile")
    # Then every queued item is a tile, in queue order, with its score and label
    order = tile_ids(page)
    assert sorted(order) == sorted(ids)
    first = page.inner_text(f'#grid .tile[data-image-id="{order[0]}"] .tile-meta')
    assert first.split() == ["0.600", "fake", "uncertain"]  # nearest the threshold first
    # And the thumbnails are blurred (her setting is on by default), once loaded
    page.wait_for_function(
        "() => [...document.querySelectorAll('#grid img')].every(i => i.complete)"
    )
    blur = page.eval_on_selector("#grid .tile img", "i => getComputedStyle(i).filter")
    assert blur.startswith("blur(")

    # When she moves right and down with the arrows, selecting with Space
    page.keyboard.press("Space")  # the first tile
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")  # the second
    columns = page.evaluate(
        "() => { const t = [...document.querySelectorAll('#grid .tile')];"
        " return t.filter(x => x.offsetTop === t[0].offsetTop).length; }"
    )
    page.keyboard.press("ArrowDown")
    cursor = page.get_attribute("#grid .tile.cursor", "data-image-id")
    assert cursor == str(order[min(len(order) - 1, 1 + columns)])
    page.keyboard.press("Space")
    page.keyboard.press("Space")  # ... and unselects it again
    selected = tile_ids(page, '#grid .tile[aria-selected="true"]')
    assert selected == order[:2]
    assert page.inner_text("#grid-selected") == "2 selected"
    shoot(page, "grid", tmp_path)

    # And confirms the selection with "c": both are decided, the grid reloads without them
    page.keyboard.press("c")
    page.wait_for_function(
        f"() => !document.querySelector('#grid .tile[data-image-id=\"{order[0]}\"]')"
    )
    for image_id in order[:2]:
        verdict = state_of(dbs, image_id)
        assert (verdict.state, verdict.final_label) == (ReviewState.DECIDED, "fake")
    assert tile_ids(page) == order[2:]

    # When she selects everything with "a" and says it is real with "r"
    page.keyboard.press("a")
    assert page.inner_text("#grid-selected") == f"{len(order) - 2} selected"
    page.keyboard.press("r")
    page.wait_for_selector("#grid .tile", state="detached")
    # Then every one was overridden to real, one review each
    for image_id in order[2:]:
        verdict = state_of(dbs, image_id)
        assert (verdict.final_label, verdict.human_label) == ("real", "real")
    page.goto(f"{live_url}/audit/?user=grace&action=review.")
    actions = page.eval_on_selector_all("#audit td.action", "cs => cs.map(c => c.textContent)")
    assert sorted(actions) == ["review.confirm"] * 2 + ["review.override"] * 7

    # And a decision posted without the CSRF token is refused
    status = page.evaluate(
        f"""() => fetch('/images/{ids[0]}/decide', {{method: 'POST',
            headers: {{'Accept': 'application/json'}}, body: new URLSearchParams({{decision: 'confirm'}})
        }}).then(r => r.status)"""
    )
    assert status in (400, 403)
    page.close()


def test_without_blur_the_grid_shows_the_images(
    live_url: str,
    browser: Any,
    seed: Callable[..., Seeded],
    make_user: Callable[..., User],
    dbs: Session,
) -> None:
    seed([0.9, 0.95])
    user = make_user("hugo", Role.VIEWER)
    dbs.get_one(User, user.id).blur_images = False
    dbs.commit()
    page = logged_in(browser, live_url, "hugo")
    page.goto(f"{live_url}/?view=grid")
    page.wait_for_selector("#grid .tile")
    assert page.eval_on_selector("#grid .tile img", "i => getComputedStyle(i).filter") == "none"
    # A viewer sees the grid but gets no decision buttons
    assert page.locator("#grid-actions").count() == 0
    page.close()


def test_an_admin_finds_failed_images_from_the_stats_page_and_retries_one(
    live_url: str,
    browser: Any,
    unfinished: Unfinished,
    make_user: Callable[..., User],
    dbs: Session,
    settings: Settings,
    tmp_path: Path,
) -> None:
    make_user("ada", Role.ADMIN)
    page = logged_in(browser, live_url, "ada")
    page.goto(f"{live_url}/stats/")
    assert page.inner_text("#failed-count") == "2 failed"
    page.click("#failed-count")
    page.wait_for_selector("#unfinished")
    reasons = page.eval_on_selector_all("#unfinished td.reason", "cs => cs.map(c => c.textContent)")
    assert reasons == ["gave up after 3 attempts", UNDECODABLE]
    shoot(page, "failed", tmp_path)
    page.check(f'input[name="image_id"][value="{unfinished.failed}"]')
    page.click("#retry-selected")
    page.wait_for_selector(".flash")
    assert "1 image re-queued" in page.inner_text(".flash")
    image = dbs.get_one(Image, unfinished.failed)
    assert image.status is ImageStatus.QUEUED
    dbs.commit()
    assert [args for _, args in queued_tasks(settings)] == [[[unfinished.failed]]]
    page.close()


def test_stats_audit_and_model_pages_are_legible(
    live_url: str,
    browser: Any,
    seed: Callable[..., Seeded],
    make_user: Callable[..., User],
    dbs: Session,
    tmp_path: Path,
) -> None:
    # Given verdicts, a bulk decision (long JSON in the audit log) and a model with a card
    seed([0.1, 0.3, 0.55, 0.9, 0.97])
    make_user("lin", Role.ADMIN)
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model_card.json", "roc.png", "confusion.png", "report.md"):
        shutil.copy(DEFAULT_MODEL / name, folder / name)
    card = json.loads((folder / "model_card.json").read_text())
    model = ModelVersion(
        sha256="ef" * 32, name="default", location=str(folder / "model.tflite"), card=card
    )
    dbs.add(model)
    dbs.commit()
    page = logged_in(browser, live_url, "lin")
    page.goto(f"{live_url}/")
    page.select_option("#bulk select[name=action]", Action.ESCALATE.value)
    page.click("#bulk button[type=submit]")
    page.click("#confirm-bulk")
    page.wait_for_selector(".flash")

    # Then on the stats page every chart spans its card and its text is readable
    page.goto(f"{live_url}/stats/")
    charts = page.eval_on_selector_all(
        ".card figure.chart svg",
        """ss => ss.map(s => ({width: s.getBoundingClientRect().width,
                 card: s.closest('.card').clientWidth,
                 text: Math.min(...[...s.querySelectorAll('text')]
                       .map(t => t.getBoundingClientRect().height).filter(h => h > 0))}))""",
    )
    assert len(charts) == 4  # throughput, labels (once), scores, activity
    for chart in charts:
        assert chart["width"] >= 0.9 * chart["card"], chart
        assert chart["text"] >= 12, chart
    # And the verdict distribution is one chart and one table
    assert page.locator("#labels figure").count() == 1
    assert page.locator("#labels table").count() == 1
    page.set_viewport_size({"width": 1280, "height": 1800})
    shoot(page, "stats-full", tmp_path)
    page.set_viewport_size({"width": 1280, "height": 800})

    # And the audit log's dates stay on one line next to long JSON
    page.goto(f"{live_url}/audit/")
    lines = page.eval_on_selector_all(
        "#audit td.when",
        """cs => cs.map(c => { const r = document.createRange(); r.selectNodeContents(c);
                 return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size; })""",
    )
    assert lines and set(lines) == {1}
    shoot(page, "audit", tmp_path)

    # And the model page is folded: short, with its details a click away
    page.goto(f"{live_url}/models/{model.id}")
    folded = page.locator("details.fold:not([open])")
    assert folded.count() >= 5
    height = page.evaluate("() => document.documentElement.scrollHeight")
    assert height < 2500, height
    shoot(page, "model", tmp_path)
    page.click("#artefacts > summary")
    assert page.locator("#artefacts img").first.is_visible()
    assert page.evaluate("() => document.documentElement.scrollHeight") > height
    page.close()
