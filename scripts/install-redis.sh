#!/usr/bin/env bash
# Install Debian's redis-server for the tests of shared state (`state: redis://...`): each test
# session starts a private instance of its own on a free port (tests/redis_server.py), so the
# system service the package would start is kept from starting (policy-rc.d: Debian's own way
# to say "install, do not start"; removed again on the way out).
# Idempotent: prints nothing when redis-server is already there.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> redis-server is missing and this is not root on Debian:" \
       "the tests of shared state (Redis) will be skipped" >&2
  exit 0
fi

echo "==> installing redis-server from Debian's packages for the shared-state tests"
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
# shellcheck source=scripts/debian-service.sh
source "$(dirname "$0")/debian-service.sh"
hold_service_start
# A machine without the package mirrors skips these tests, visibly, rather than failing them all.
if ! { apt-get update && apt-get install -y --no-install-recommends redis-server; }; then
  echo "==> could not install redis-server from Debian's packages: its tests will be skipped" >&2
  exit 0
fi
echo "    $(redis-server --version | cut -d' ' -f1-3) ready after $(( $(date +%s) - start ))s"
