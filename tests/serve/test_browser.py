"""The demo page in a real browser (Debian's chromium driven by Playwright): upload, overlay, slider.

The session fixture installs chromium with apt-get when /usr/bin/chromium is missing; the test is
skipped (with the reason printed) only when that is impossible.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.serve.live import LiveServer
from tests.serve.samples import png_of, synthetic_image

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/unetkit-demo-page.png")


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]):
        print(f"browser test setup: {' '.join(step)}")
        done = subprocess.run(step, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            _skip(f"{' '.join(step)} failed: {done.stderr.strip()[-500:]}")


def _skip(reason: str) -> None:
    print(f"browser test skipped: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            _skip("chromium is missing and apt-get (as root) is not available to install it")
        with open("/tmp/unetkit-chromium-install.lock", "w") as lock:  # one installer across xdist workers
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not CHROMIUM.exists():
                _apt_install("chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _skip("the playwright package is missing: pip install 'unetkit[dev]'")
    return CHROMIUM


def test_demo_page_shows_the_overlay(chromium, artifact_path, tmp_path):
    from playwright.sync_api import sync_playwright

    image = tmp_path / "cells.png"
    image.write_bytes(png_of(synthetic_image(160, 200)))
    server = LiveServer(artifact_path, tmp_path / "server.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('version')", timeout=10_000)
            assert page.locator("#legend li").count() == 3
            page.set_input_files("#file", str(image))
            page.wait_for_function("document.body.dataset.state === 'done'", timeout=20_000)
            size = page.evaluate("[document.getElementById('mask').naturalWidth, document.getElementById('mask').naturalHeight]")
            assert size == [200, 160]
            box, under = page.locator("#mask").bounding_box(), page.locator("#image").bounding_box()
            assert box is not None and under is not None and box["width"] > 300
            assert all(abs(box[k] - under[k]) < 1 for k in ("x", "y", "width", "height")), (box, under)  # aligned
            assert page.locator("#legend li").count() == 3 and "%" in page.locator("#legend").inner_text()
            assert "ms" in page.locator("#timing").inner_text()
            page.locator("#opacity").fill("25")
            assert page.evaluate("getComputedStyle(document.getElementById('mask')).opacity") == "0.25"
            assert page.locator("#opacity-value").inner_text() == "25%"
            page.locator("#opacity").fill("70")
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert errors == [] and page.locator("#error").inner_text() == ""
            browser.close()
    finally:
        server.stop()
    assert SCREENSHOT.stat().st_size > 5_000
