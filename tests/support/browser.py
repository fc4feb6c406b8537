"""A headless Debian Chromium driven by selenium, for the console's browser tests (never downloads anything)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

T = TypeVar("T")


def missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found: install Debian's {package} package to run the browser tests"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (it is in the test extra)"
    return None


@contextmanager
def chromium(*, width: int = 1440, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium session (selenium WebDriver) on the system browser; quits on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never go online for a driver or a browser
    profile = tempfile.mkdtemp(prefix="traceexport-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(predicate: Callable[[], T], *, timeout: float = 60.0, what: str = "the page") -> T:
    """Poll ``predicate`` (exceptions count as not yet) until it returns a truthy value; fail after ``timeout``
    (a minute by default: Chromium on two cores busy with the rest of the suite has taken over 20 s to show a
    page)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a stale or not-yet-present element: try again
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}"
                                 + (f" (last error: {last!r})" if last else ""))
        time.sleep(0.1)


def severe_console_messages(driver: Any) -> list[str]:
    """Browser console errors (CSP violations, script errors), minus expected failed fetches."""
    messages = []
    for entry in driver.get_log("browser"):
        text = entry.get("message", "")
        if entry.get("level") == "SEVERE" and "Failed to load resource" not in text and "/api/" not in text:
            messages.append(text)
    return messages
