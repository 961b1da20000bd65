"""A real browser for tests: Debian's headless chromium, driven by playwright.

Playwright cannot download its own browser build here (and CI has no network beyond the
package registries), so it drives ``/usr/bin/chromium`` from the Debian package that
``scripts/test`` installs.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageStat
from playwright.sync_api import Browser, ViewportSize, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root in CI, where chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DESKTOP = ViewportSize(width=1400, height=1000)
PHONE = ViewportSize(width=390, height=844)


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless chromium for the duration of the block."""
    assert os.path.exists(CHROMIUM), (
        f"{CHROMIUM} is missing: install Debian's 'chromium' package (scripts/test does)"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS))
        try:
            yield browser
        finally:
            browser.close()


def assert_not_blank(png: bytes, min_colours: int = 40) -> None:
    """The screenshot shows something: many colours and a real spread of brightness."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 16)
    count = len(colours) if colours is not None else 1 << 16
    spread = ImageStat.Stat(image.convert("L")).stddev[0]
    assert count >= min_colours, f"the screenshot has only {count} colours"
    assert spread >= 10.0, f"the screenshot is almost uniform (brightness stddev {spread:.1f})"
