"""Debian's Chromium for the browser tests, driven by Playwright through its executable path
(no test tool ever downloads a browser). `make test` installs it; without it a local run skips
the browser checks and CI fails them."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling hosts this closed network
# refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing() -> bool:
    """True when the browser is absent and that is allowed (a developer's machine, not CI)."""
    return not Path(CHROMIUM).exists() and not os.environ.get("CI")
