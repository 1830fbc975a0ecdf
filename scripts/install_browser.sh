#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test (Playwright drives it through its
# executable path; no browser is ever downloaded by a test tool). Idempotent and quick when
# Chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: /usr/bin/chromium is missing and apt-get is not available;" \
    "install Chromium with your package manager" >&2
  exit 2
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install_browser: need root (or sudo) to install Debian's chromium package" >&2
    exit 2
  fi
fi
echo "install_browser: installing Debian's chromium package (once)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
