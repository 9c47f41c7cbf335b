#!/usr/bin/env bash
# Install Debian's Chromium for the web console's browser tests (tests/web/), which drive it
# with Playwright. `playwright install` would download a browser build from outside the
# package registries, which is not reachable here; Debian's package is.
# Idempotent: prints nothing when /usr/bin/chromium is already there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> chromium is not installed and this is not root on Debian:" \
       "the browser tests in tests/web/ will be skipped" >&2
  exit 0
fi

echo "==> installing chromium from Debian's packages for the web console tests (about a minute)"
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
apt-get update
apt-get install -y chromium
echo "    $(/usr/bin/chromium --version) ready after $(( $(date +%s) - start ))s"
