"""Headless Chromium for browser tests (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium).

``needs_chromium`` skips a test module when either is not installed (``.ci/run`` installs both);
``chromium(width, height)`` is a driver of a window that size, quit on exit.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

#: Seconds a page has to load, and an element to show up.
WAIT = 20

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000, *, page_load: float = WAIT) -> Iterator:
    """A headless Chromium driver with a ``width`` x ``height`` window at scale 1, that gives a page
    ``page_load`` seconds to load; quit on exit."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the dev extra (selenium)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(page_load)
    try:
        yield driver
    finally:
        driver.quit()
