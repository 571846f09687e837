"""Headless Chromium for the console's browser tests: the ``driver`` fixture and a few
verbs over the WebDriver (``Console``), shared by every test that clicks through a page.

Needs Debian's ``chromium`` and ``chromium-driver``; without them a test is skipped, except
under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent.parent / "artifacts" / "console"
WAIT = 15


def require_browser() -> None:
    missing = [
        p for p in (CHROMIUM, CHROMEDRIVER) if not (os.access(p, os.X_OK) or shutil.which(p))
    ]
    if not missing:
        return
    reason = (
        f"{' and '.join(missing)} not installed: the console browser test needs Debian's "
        "chromium and chromium-driver (apt-get install chromium chromium-driver)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(WAIT)
    try:
        yield browser
    finally:
        browser.quit()


def left_the_page(element: Any) -> bool:
    """Whether ``element`` belongs to a page the browser has navigated away from.

    Selenium's ``staleness_of`` knows only the standard stale-element error; mid-navigation
    chromedriver may instead answer "Node with given id does not belong to the document",
    which says the same.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


class Console:
    """A few verbs over the WebDriver, named after what the operator does."""

    def __init__(self, driver: Any, base: str, shots: str) -> None:
        self.driver = driver
        self.base = base
        self.shots = shots
        self.count = 0

    def by(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        found: list[Any] = self.driver.find_elements(By.CSS_SELECTOR, selector)
        return found

    def wait_for(self, selector: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, selector))
        )

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def submit(self, button: Any, then: str) -> None:
        """Click a form's button and wait for the page the redirect lands on."""
        from selenium.webdriver.support.ui import WebDriverWait

        button.click()
        WebDriverWait(self.driver, WAIT).until(lambda _driver: left_the_page(button))
        self.wait_for(then)

    def text(self) -> str:
        return str(self.by("body").text)

    def shot(self, name: str) -> Path:
        self.count += 1
        path = ARTIFACTS / f"{self.shots}-{self.count:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        assert path.stat().st_size > 1000
        return path

    def sign_in(self, token: str) -> None:
        self.open("/console")
        self.wait_for("#token").send_keys(token)
        self.submit(self.by("#sign-in"), "#whoami")

    def sign_out(self) -> None:
        self.submit(self.by("#sign-out"), "#token")

    def csp_violations(self) -> list[str]:
        return [
            str(entry["message"])
            for entry in self.driver.get_log("browser")
            if "Content Security Policy" in str(entry.get("message", ""))
        ]
