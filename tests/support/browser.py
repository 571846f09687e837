"""Headless Chromium for the console's browser tests: the ``driver`` fixture, a few verbs
over the WebDriver (``Console``) and ``served_console`` (a ``broker serve`` to click
through), shared by every test that clicks through a page.

Needs Debian's ``chromium`` and ``chromium-driver``; without them a test is skipped, except
under ``CI=true``, where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from tests.support.processes import BrokerProcess, broker_env

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


_OVERFLOW = """
const root = document.documentElement;
const edge = root.clientWidth + 1;
const right = e => e.getBoundingClientRect().right;
// Cut off by a box that hides its overflow within the window: no part of the page's width.
const clipped = e => {
  for (let a = e.parentElement; a; a = a.parentElement) {
    if (getComputedStyle(a).overflowX !== 'visible' && right(a) <= edge) return true;
  }
  return false;
};
const past = [...document.querySelectorAll('body *')].filter(
  e => right(e) > edge && !(e.parentElement && right(e.parentElement) > edge) && !clipped(e));
const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
  (typeof e.className === 'string' && e.className.trim()
    ? '.' + e.className.trim().split(/\\s+/).join('.') : '');
return {
  scroll: root.scrollWidth,
  client: root.clientWidth,
  wide: past.slice(0, 5).map(e => name(e) + ' reaches ' + Math.round(right(e)) + 'px'),
};
"""

_LINKS = """
const out = new Set();
for (const a of document.querySelectorAll(arguments[0] + ' a[href]')) {
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/console')) continue;
  if (url.pathname.startsWith('/console/static')) continue;
  out.add(url.pathname + url.search);
}
return [...out];
"""


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

    def overflow(self) -> dict[str, Any]:
        """How far the page is wider than the window: ``scroll`` and ``client`` widths of
        the document, and the outermost elements reaching past the window's right edge (to
        name the culprit when a page scrolls sideways)."""
        found: dict[str, Any] = self.driver.execute_script(_OVERFLOW)
        return found

    def fits(self) -> bool:
        """Whether the page is no wider than the window (it does not scroll sideways)."""
        width = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        return bool(width[0] <= width[1])

    def links(self, within: str = "main") -> list[str]:
        """The console paths the links in ``within`` lead to (same origin, no fragment)."""
        found: list[str] = self.driver.execute_script(_LINKS, within)
        return found

    def csp_violations(self) -> list[str]:
        return [
            str(entry["message"])
            for entry in self.driver.get_log("browser")
            if "Content Security Policy" in str(entry.get("message", ""))
        ]


class ServedConsole(NamedTuple):
    broker: BrokerProcess
    api: httpx.Client  # on the broker's URL
    admin: str  # the bootstrap admin's token
    ui: Console


@contextlib.contextmanager
def served_console(
    driver: Any,
    tmp_path: Path,
    database_url: str,
    shots: str,
    *,
    timeout: float = 10,
    **extra: str,
) -> Iterator[ServedConsole]:
    """``broker serve`` on ``database_url`` (``extra``: more BROKER_ settings), an API client
    on it, its bootstrap admin, and the browser as a ``Console`` whose screenshots are
    ``shots-NN-*.png`` (those of an earlier run removed first)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob(f"{shots}-*.png"):
        old.unlink()
    with (
        BrokerProcess(broker_env(tmp_path, database_url, **extra)) as broker,
        httpx.Client(base_url=broker.url, timeout=timeout) as api,
    ):
        admin = broker.bootstrap_token
        assert admin is not None, broker.output
        yield ServedConsole(broker, api, admin, Console(driver, broker.url, shots))
