#!/usr/bin/env bash
# Install Debian's Chromium for the web console's browser tests (tests/web/), which drive it
# with Playwright, and a CJK font: without one the console's Chinese renders as boxes in
# screenshots. `playwright install` would download a browser build from outside the package
# registries, which is not reachable here; Debian's packages are.
# Idempotent: prints nothing when chromium and a CJK font are already there.
set -euo pipefail

# fonts-noto-cjk: Noto Sans/Serif CJK (SC, TC, JP, KR), what Chromium picks for zh-CN text.
FONT_PACKAGE=fonts-noto-cjk
has_cjk_font() {
  command -v fc-list >/dev/null 2>&1 && fc-list :lang=zh family | grep -q .
}

if [ -x /usr/bin/chromium ] && has_cjk_font; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> chromium or a CJK font is missing and this is not root on Debian:" \
       "the browser tests in tests/web/ may be skipped, and Chinese shows as boxes" >&2
  exit 0
fi

echo "==> installing chromium and $FONT_PACKAGE from Debian's packages for the web console" \
     "tests (a minute or two)"
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
# A machine without the package mirrors skips these tests, visibly, rather than failing them all.
if ! { apt-get update && apt-get install -y chromium fontconfig "$FONT_PACKAGE"; }; then
  echo "==> could not install Chromium from Debian's packages: its tests will be skipped" >&2
  exit 0
fi
echo "    $(/usr/bin/chromium --version) and $(fc-list :lang=zh family | head -1) ready" \
     "after $(( $(date +%s) - start ))s"
