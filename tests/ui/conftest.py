"""Headless Chromium for the web UI tests: Debian's ``chromium`` driven by Playwright
(``playwright install`` is not needed: the executable path is given)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
# a loaded CI machine may take a few seconds to settle a page; a real failure still shows
expect.set_options(timeout=15_000)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module-scoped: Playwright's sync API keeps an event loop running on the main thread
    while it is open, and other modules' tests use `asyncio.run`."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh as root (it installs Debian's chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the tests save screenshots; copied to $HEADWAY_SCREENSHOTS (docs/img) if set."""
    where = tmp_path_factory.mktemp("screenshots")
    yield where
    target = os.environ.get("HEADWAY_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in where.glob("*.png"):
            shutil.copy(shot, Path(target) / shot.name)
