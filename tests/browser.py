"""Headless Chromium for the dashboard's browser tests: Debian's ``chromium``
and ``chromium-driver`` (installed by scripts/setup.sh for the tests),
driven by Selenium. Nothing is downloaded: the browser and its driver are
the system's.

Selenium's calls block, so each runs in a thread (``Browser.call``): the
reactor stays free for the test's own clients of the server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, Callable

from twisted.internet.threads import deferToThread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install 'wire-mesh[test]')"
    if CHROMIUM is None or DRIVER is None:
        return "Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them)"
    return None


class Browser:
    """One headless Chromium, quit by the test's cleanup (also on failure)."""

    def __init__(self, test, screenshots: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.screenshots = screenshots
        os.makedirs(screenshots, exist_ok=True)
        self._profile = tempfile.mkdtemp(prefix="wire-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",  # the tests run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            # The test server's certificate is its own, self-signed.
            "--ignore-certificate-errors",
            "--window-size=1400,900",
            f"--user-data-dir={self._profile}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        self.driver.set_page_load_timeout(30)
        test.addCleanup(self.quit)

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, f: Callable[..., Any], *args: Any):
        """``f(driver, *args)`` in a thread; a Deferred of its result."""
        return deferToThread(f, self.driver, *args)

    def screenshot(self, name: str) -> str:
        path = os.path.join(self.screenshots, f"{name}.png")
        self.driver.save_screenshot(path)
        return path


def wait_for(driver, condition: Callable[[Any], Any], timeout: float = 15.0, what: str = "the condition") -> tuple[Any, float]:
    """Poll ``condition(driver)`` (in the calling thread) until it is truthy;
    its value and the seconds it took. Raises AssertionError on timeout."""
    started = time.monotonic()
    last: Any = None
    while True:
        try:
            last = condition(driver)
        except Exception as e:  # the page is changing under us: try again
            last = e
        else:
            if last:
                return last, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
        time.sleep(0.05)
