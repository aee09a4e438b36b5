"""The review page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``), keyboard only.

* grade 10 outputs of the embedded model (3 Bad with reasons), add a criterion with a regex check, toggle it
  on 2 outputs, stop the server, start it again and find everything still there; the page is saved as
  ``docs/review.png``;
* an output that is ``<script>`` / ``<img onerror>`` shows as text: no dialog, no script run.

Skipped only when chromium or chromedriver is not installed (``.ci/run`` installs both).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from dspy_ext.adapters import PlainAdapter
from dspy_ext.data import load_task
from dspy_ext.review import ReviewApp, ReviewServer, ReviewStore, collect
from programs import Transform

from support.browser import WAIT, chromium, needs_chromium

pytestmark = needs_chromium
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "review.png"


@pytest.fixture
def browser() -> Iterator:
    with chromium() as driver:
        yield driver


class Page:
    """Keyboard-only driving of the review page."""

    def __init__(self, driver) -> None:
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.By, self.ActionChains = driver, By, ActionChains
        # An element read while the next page loads goes stale: the wait then simply tries again.
        self.wait = WebDriverWait(
            driver, WAIT, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
        )

    def press(self, *keys: str) -> None:
        """Real key events to whatever has the focus (the page, or a field the page focused)."""
        self.ActionChains(self.driver).send_keys(*keys).perform()

    def key(self) -> str:
        return self.driver.find_element(self.By.ID, "item").get_attribute("data-key")

    def text(self, element_id: str) -> str:
        return self.driver.find_element(self.By.ID, element_id).text

    def saved(self) -> int:
        return int(self.driver.find_element(self.By.TAG_NAME, "body").get_attribute("data-saved"))

    def press_and_wait_saved(self, *keys: str) -> None:
        before = self.saved()
        self.press(*keys)
        self.wait.until(lambda d: self.saved() > before or "error" in self.status_class())

    def status_class(self) -> str:
        return self.driver.find_element(self.By.ID, "status").get_attribute("class") or ""

    def press_and_wait_new_item(self, keys: str) -> str:
        before = self.key()
        self.press(keys)
        self.wait.until(lambda d: d.find_elements(self.By.ID, "item") and self.key() != before)
        self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        return self.key()

    def marks(self) -> list[str]:
        return [n.text for n in self.driver.find_elements(self.By.CSS_SELECTOR, "#criteria .mark")]


def start(store: ReviewStore, **kwargs) -> ReviewServer:
    return ReviewServer(ReviewApp(store, **kwargs), port=0).start()


@pytest.mark.embedded
def test_keyboard_review_of_the_embedded_model_survives_a_restart(browser, local_lm, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    task = load_task("sentiment")
    program = Transform(instructions=task.baseline_instruction)
    program.predict.demos = task.train[:3]
    path = tmp_path / "review.sqlite"
    store = ReviewStore(path)
    with dspy.context(adapter=PlainAdapter()):
        summary = collect(
            program, task.test[:12], store=store, input_keys=task.input_keys, output_keys=task.output_keys, lm=local_lm
        )
    assert summary.new_outputs == 12 and len(store.items()) == 12
    server = start(store, lm=local_lm, adapter=PlainAdapter(), title="sentiment · embedded SmolLM2")
    page = Page(browser)
    browser.get(server.url)
    page.wait.until(lambda d: d.find_elements(page.By.ID, "item"))

    # Bad for the first outputs that miss the gold label (with that as the reason), then as many as needed
    # at the end so that exactly 3 of the 10 are Bad.
    reasons: dict[str, str] = {}
    graded: list[str] = []
    for i in range(10):
        key, output, gold = page.key(), page.text("output"), page.text("gold")
        missing = 3 - len(reasons)
        if missing and (output.strip().lower() != gold.strip().lower() or 10 - i == missing):
            reason = (
                f"wrong: the review is {gold}, not <{output[:30]}>"
                if output.strip() != gold
                else "right label, but I asked for a <b>bad</b> one here"
            )
            page.press("b")  # focuses the reason field: a Bad grade needs one
            assert browser.switch_to.active_element.get_attribute("id") == "reason"
            page.press_and_wait_saved(reason, Keys.ENTER)
            assert page.text("grade-badge") == "bad"
            reasons[key] = reason
        else:
            page.press_and_wait_saved("g")
            assert page.text("grade-badge") == "good"
        graded.append(key)
        assert page.text("progress") == f"{i + 1}/12 reviewed"
        page.press_and_wait_new_item("j")
    assert len(set(graded)) == 10 and page.key() not in graded and len(reasons) == 3

    # A criterion with a regex check, typed into the form that n opens.
    page.press("n")
    page.press(
        "bare label", Keys.TAB, "answers with one lower-case label", Keys.TAB, "regex:^(positive|negative)$", Keys.ENTER
    )
    page.wait.until(lambda d: d.find_elements(page.By.CSS_SELECTOR, "#criteria li"))
    assert browser.find_element(page.By.CSS_SELECTOR, "#criteria .crit-name").text == "bare label"
    # Toggle it on 2 outputs: back (k) to the latest Bad one (fail), then the one before it (fail, then pass).
    back = 0
    while page.press_and_wait_new_item("k") not in reasons:
        back += 1
        assert back < 10
    failed_key = page.key()
    page.press_and_wait_saved("1")
    assert page.marks() == ["fail"]
    assert browser.find_element(page.By.ID, "reason").get_attribute("value") == reasons[failed_key]
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    passed_key = page.press_and_wait_new_item("k")
    page.press_and_wait_saved("1")
    page.press_and_wait_saved("1")
    assert page.marks() == ["pass"]
    assert page.press_and_wait_new_item("j") == failed_key  # forward through this tab's history

    # A criterion proposed from the reason by the embedded model: accept/edit/discard is the person's.
    page.press("p")
    page.wait.until(
        lambda d: d.find_element(page.By.ID, "new-criterion").is_displayed() or "error" in page.status_class()
    )
    if browser.find_element(page.By.ID, "new-criterion").is_displayed():
        assert browser.find_element(page.By.ID, "crit-name").get_attribute("value").strip()
        page.press(Keys.ESCAPE)  # discard
        assert not browser.find_element(page.By.ID, "new-criterion").is_displayed()
    else:
        assert page.text("status")  # a one-line reason why the LM gave no proposal

    # Stop the server, start a new one on the same file, and find everything again.
    server.stop()
    store.close()
    store = ReviewStore(path)
    server = start(store, lm=local_lm, adapter=PlainAdapter())
    try:
        browser.get(server.url)
        page.wait.until(lambda d: d.find_elements(page.By.ID, "item"))
        assert page.text("progress") == "10/12 reviewed"
        page.press("f")  # unreviewed -> all
        page.wait.until(lambda d: d.find_element(page.By.ID, "filter").get_attribute("data-filter") == "all")
        page.press("f")  # all -> bad
        page.wait.until(lambda d: d.find_element(page.By.ID, "filter").get_attribute("data-filter") == "bad")
        seen = {}
        for _ in range(3):
            seen[page.key()] = browser.find_element(page.By.ID, "reason").get_attribute("value")
            assert page.text("grade-badge") == "bad"
            if len(seen) < 3:
                page.press_and_wait_new_item("j")
        assert seen == reasons
        for key, mark in ((failed_key, "fail"), (passed_key, "pass")):
            browser.get(f"{server.base_url}/item/{key}")
            assert page.marks() == [mark]
        browser.get(f"{server.base_url}/criteria")
        assert "regex:^(positive|negative)$" in browser.find_element(page.By.ID, "criteria-page").text
        items = {i.key: i for i in store.items()}
        assert sum(i.grade is not None for i in items.values()) == 10
        assert {k: i.reason for k, i in items.items() if i.grade == "bad"} == reasons
        [criterion] = store.criteria()
        assert str(criterion.checks[0].spec) == "regex:^(positive|negative)$"
        assert {k: i.judgements for k, i in items.items() if i.judgements} == {
            failed_key: {criterion.id: False},
            passed_key: {criterion.id: True},
        }
    finally:
        server.stop()
        store.close()


XSS_SCRIPT = "<script>window.__xss = 1; alert('script ran')</script>"
XSS_IMG = "<img src=x onerror=\"window.__xss = 2; alert('onerror ran')\">"


def test_hostile_outputs_show_as_text_in_the_browser(browser, fake_lm, tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.keys import Keys

    lm = fake_lm(lambda messages: XSS_SCRIPT if "first" in messages[-1]["content"] else XSS_IMG)
    store = ReviewStore(tmp_path / "xss.sqlite")
    with dspy.context(adapter=PlainAdapter()):
        collect(Transform(), [{"input": "first"}, {"input": "second"}], store=store, input_keys=("input",), lm=lm)
    server = start(store)
    page = Page(browser)
    try:
        browser.get(server.url)
        page.wait.until(lambda d: d.find_elements(page.By.ID, "item"))
        shown = set()
        for step in range(2):
            with pytest.raises(NoAlertPresentException):
                browser.switch_to.alert.text  # noqa: B018 -- raises when no dialog is open
            assert browser.execute_script("return window.__xss === undefined")
            assert not browser.find_elements(page.By.CSS_SELECTOR, "#item img, #item script")
            shown.add(page.text("output"))
            if step == 0:
                # Reviewer text is escaped too.
                page.press("b")
                page.press_and_wait_saved("<img src=x onerror=alert(3)> is not an answer", Keys.ENTER)
                browser.refresh()
                page.wait.until(lambda d: d.find_elements(page.By.ID, "item"))
                assert (
                    browser.find_element(page.By.ID, "reason").get_attribute("value")
                    == "<img src=x onerror=alert(3)> is not an answer"
                )
                assert browser.execute_script("return window.__xss === undefined")
                page.press_and_wait_new_item("j")
        # The page shows exactly what the program returned (the plain adapter's parse trims a trailing '>').
        assert shown == {i.output_text for i in store.items()}
        assert any(s.startswith("<script>window.__xss") for s in shown) and any("onerror=" in s for s in shown)
    finally:
        server.stop()
        store.close()
