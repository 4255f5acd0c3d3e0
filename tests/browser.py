"""Headless Chromium for the tests that look at a page (Debian's chromium and chromium-driver).

:func:`why_no_browser` says why none can run here (the tests skip with it);
:func:`chromium` starts one with a fresh profile, with the flags this machine needs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["chromium", "why_no_browser"]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def why_no_browser() -> str | None:
    """Why headless Chromium with selenium cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if _binary("chromium", "chromium-browser") is None:
        return "chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)"
    if _binary("chromedriver") is None:
        return "chromedriver is not installed (apt-get install chromium-driver; .ci/run does)"
    return None


@contextmanager
def chromium(width: int = 1100, height: int = 1300) -> Iterator[Any]:
    """A selenium driver of headless Chromium with a profile of its own, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="goelect-chromium-")
    options = webdriver.ChromeOptions()
    binary = _binary("chromium", "chromium-browser")
    assert binary is not None
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    service = Service(executable_path=_binary("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
