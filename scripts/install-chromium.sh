#!/usr/bin/env bash
# Install Debian's Chromium for the web console's browser tests (tests/web/).
# Playwright's own `playwright install` downloads a browser build from outside the package
# registries, which is not reachable here; Debian's package is. Idempotent: silent when
# /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> chromium: not installed and cannot apt-get here (need root on Debian);" \
       "the browser tests in tests/web/ will be skipped" >&2
  exit 0
fi

echo "==> installing chromium from Debian's packages for the web console tests (~1-3 min)"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium fonts-noto-cjk
echo "    $(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)"
