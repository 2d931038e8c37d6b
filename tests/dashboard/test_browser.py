"""A real browser (Debian's chromium, driven by Playwright) on the dashboard of a live run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _step(page) -> int:
    text = page.locator("#step").inner_text()
    return int(re.match(r"\d+", text).group(0)) if re.match(r"\d+", text) else -1


def test_the_page_shows_a_live_run_and_updates(live, browser):
    from playwright.sync_api import expect

    SHOTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(live["url"] + "/?run=live")
    rows = page.locator("#leaderboard tbody tr")
    expect(rows).to_have_count(2, timeout=20000)
    # A student's name is shown as text, never interpreted as markup.
    expect(page.locator("#leaderboard")).to_contain_text("<b>grace</b>")
    assert page.locator("#leaderboard b").count() == 0
    expect(page.locator("#loss-chart svg path.series-g_loss")).to_have_count(1, timeout=20000)
    page.wait_for_function("document.getElementById('sample').naturalWidth > 0", timeout=20000)
    first_step = _step(page)
    first_d = page.locator("#loss-chart path.series-g_loss").get_attribute("d")
    page.screenshot(path=str(SHOTS / "dashboard-first.png"), full_page=True)
    # Then it updates by itself: the step moves on and the curve grows.
    page.wait_for_function(
        f"parseInt(document.getElementById('step').textContent) >= {first_step + 4}",
        timeout=30000,
    )
    page.wait_for_timeout(2500)
    assert page.locator("#loss-chart path.series-g_loss").get_attribute("d") != first_d
    page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)
    assert _step(page) > first_step


def test_controls_are_refused_without_login(live, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.goto(live["url"] + "/?run=live")
    # Stop asks first; declined, nothing is sent (Playwright dismisses dialogs by default).
    asked = []

    def decline(dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", decline)
    page.locator("button[data-action=stop]").click()
    expect(page.locator("#status")).to_have_text("running")
    assert asked and "cannot be resumed" in asked[0] and "live" in asked[0]
    assert page.locator("#control-message").inner_text() == ""
    page.remove_listener("dialog", decline)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("button[data-action=stop]").click()
    expect(page.locator("#control-message")).to_have_text("log in as the instructor first")
    page.fill("#student-name", "ada")
    page.locator("#disable-student").click()
    expect(page.locator("#control-message")).to_have_text("log in as the instructor first")
    page.fill("#password", "wrong")
    page.locator("#login-form button").click()
    expect(page.locator("#control-message")).to_have_text("wrong password")
    expect(page.locator("#status")).to_have_text("running")
