"""The web page in a real headless Chromium (Debian's chromium + chromium-driver): speak and hear it play."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.server.conftest import ALICE

CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMEDRIVER) and shutil.which("chromium")),
    reason="needs Debian's chromium and chromium-driver (see README)",
)


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1100,1400",
    ):
        options.add_argument(arg)
    # Selenium Manager would try to download a driver, which fails offline: point at Debian's.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def artifact_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $UTTER_TTS_TEST_ARTIFACTS (for CI to collect), else the test's tmp dir."""
    out = Path(os.environ.get("UTTER_TTS_TEST_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_generate_speech_from_the_page_and_play_it(server, browser, tmp_path, fmt):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server.url + "/")
    key = browser.find_element(By.ID, "apikey")
    key.clear()
    key.send_keys(ALICE, Keys.TAB)  # "change" stores the key and reloads the voice list with it
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    wait.until(
        lambda d: any(
            o.get_attribute("value") == "ryan" for o in Select(d.find_element(By.ID, "voice")).options
        )
    )
    Select(browser.find_element(By.ID, "voice")).select_by_value("ryan")
    Select(browser.find_element(By.ID, "format")).select_by_value(fmt)
    text = browser.find_element(By.ID, "text")
    text.clear()
    text.send_keys("Hello from the browser.")
    browser.find_element(By.ID, "speak").click()
    wait.until(
        lambda d: (
            d.find_element(By.ID, "status").text.startswith(("done", "failed"))
            or "error" in d.find_element(By.ID, "status").get_attribute("class")
        )
    )
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("done"), status
    # the audio element really plays: it has a finite, nonzero duration and its clock moves
    wait.until(
        lambda d: d.execute_script(
            "const p = document.getElementById('player');"
            "return isFinite(p.duration) && p.duration > 0 && (p.currentTime > 0 || p.ended);"
        )
    )
    duration = browser.execute_script("return document.getElementById('player').duration")
    assert duration > 0
    assert not browser.find_element(By.ID, "download").get_attribute("hidden")
    browser.save_screenshot(str(artifact_dir(tmp_path) / f"web-page-{fmt}.png"))


def test_schema_docs_page_lists_every_route(server, browser, tmp_path):
    """/docs renders, from /openapi.json alone, every method and path with the speech request's fields."""
    import httpx
    from selenium.webdriver.support.ui import WebDriverWait

    spec = httpx.get(server.url + "/openapi.json").json()
    expected = [f"{m.upper()} {path}" for path, item in spec["paths"].items() for m in item]
    browser.get(server.url + "/docs")
    heads = "return Array.from(document.querySelectorAll('section h2'), (h) => h.textContent)"
    WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda d: d.execute_script(heads) or d.find_elements("css selector", ".error")
    )
    assert not browser.find_elements("css selector", ".error")
    shown = browser.execute_script(heads)
    assert set(expected) <= set(shown), set(expected) - set(shown)
    speech = browser.execute_script(
        "const h = Array.from(document.querySelectorAll('section h2'))"
        ".find((h) => h.textContent === 'POST /v1/audio/speech');"
        "return h.parentNode.textContent"
    )
    assert "Request body (application/json)" in speech
    for field in ("input", "voice", "response_format", "stream_format"):
        assert field in speech
    browser.save_screenshot(str(artifact_dir(tmp_path) / "docs-page.png"))
