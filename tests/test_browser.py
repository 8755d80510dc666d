"""The HTML run report in a real headless Chromium: it loads offline with no console errors
and a person sees the answer, the gists and the code cells."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from delm_rlm.trace_html import write_html
from scripted_models import build_run

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "headless Chromium not installed (Debian: apt-get install chromium chromium-driver; the project's setup script does this)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    asyncio.run(build_run(run_dir))
    return write_html(run_dir, run_dir / "report.html")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Background networking off: otherwise Chromium tries to reach the (closed) network.
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1600",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_loads_without_console_errors_and_shows_the_run(report: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.get(report.resolve().as_uri())
    assert browser.title.startswith("delm-rlm run")
    # Anything the page logs at warning level or above (script errors, blocked fetches, CSP
    # violations) is a failure.
    problems = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert problems == []

    answer = browser.find_element(By.ID, "answer")
    assert answer.is_displayed() and answer.text == "Answer: 3"
    # Which agent's gist gets id g1 is a race, so the admitted card is found by its status.
    gist = browser.find_element(By.CSS_SELECTOR, "article.gist.admitted")
    assert gist.is_displayed() and re.search(r"matching lines in t\d", gist.text) and "admitted" in gist.text
    rejected = browser.find_element(By.CSS_SELECTOR, "article.gist.rejected")
    assert rejected.is_displayed() and "check printed" in rejected.text
    cell = browser.find_element(By.CSS_SELECTOR, "li.ev.cell pre.code")
    browser.execute_script("arguments[0].scrollIntoView()", cell)
    assert cell.is_displayed() and "propose(" in cell.text
    # The corpus's markup (`<b>fresh</b>`, `<script>alert('x')</script>`) is shown as text, never run.
    assert [b for b in browser.find_elements(By.TAG_NAME, "b") if b.text == "fresh"] == []
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1
    assert "<b>fresh</b>" in browser.find_element(By.TAG_NAME, "body").get_attribute("textContent")


def test_agent_toggles_and_expand_all_work(report: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.get(report.resolve().as_uri())
    lane = browser.find_element(By.CSS_SELECTOR, 'div.lane[data-lane="a2"]')
    assert lane.is_displayed()
    browser.find_element(By.CSS_SELECTOR, 'button.lane-toggle[data-lane="a2"]').click()
    assert not lane.is_displayed()
    browser.find_element(By.CSS_SELECTOR, 'button.lane-toggle[data-lane="a2"]').click()
    assert lane.is_displayed()

    response = browser.find_element(By.CSS_SELECTOR, "details.response pre.response")
    assert not response.is_displayed()
    browser.find_element(By.ID, "expand-all").click()
    browser.execute_script("arguments[0].scrollIntoView()", response)
    assert response.is_displayed() and "```repl" in response.text
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []


def test_the_timeline_and_the_answer_graph_are_drawn(report: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    browser.get(report.resolve().as_uri())
    gantt = browser.find_element(By.CSS_SELECTOR, "svg.gantt")
    browser.execute_script("arguments[0].scrollIntoView()", gantt)
    assert gantt.is_displayed() and gantt.size["width"] > 500
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.gantt g.bar rect")
    assert len(bars) >= 3 and all(b.size["width"] >= 2 for b in bars)  # t1, t2 twice, the finalizer
    graph = browser.find_element(By.CSS_SELECTOR, "svg.answer-graph")
    browser.execute_script("arguments[0].scrollIntoView()", graph)
    assert graph.is_displayed() and "Answer: 3" in graph.text
    nodes = browser.find_elements(By.CSS_SELECTOR, "svg.answer-graph g.node")
    assert len(nodes) == 2 and all("PARTIAL" in n.text for n in nodes)
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
