"""Headless Chromium for the page tests (Debian's ``chromium``; no network, throwaway profile)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

#: Skip marker of the tests that need a real browser.
needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium not installed (apt-get install chromium); the browser render is not checked",
)


def screenshot(page: Path, png: Path, profile: Path, window_px: tuple[int, int]) -> Path:
    """Render the HTML file ``page`` into ``png`` at ``window_px`` (width, height)."""
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={png}",
         f"--window-size={window_px[0]},{window_px[1]}", Path(page).resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return png
