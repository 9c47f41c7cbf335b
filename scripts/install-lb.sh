#!/usr/bin/env bash
# Install Debian's nginx for the `replicas` benchmark (bench/suites/replicas.py): the bench
# runs it as the load balancer in front of three `nobusy serve` replicas, on loopback, with a
# private configuration, pid file and logs in bench/.run/; the system service the package
# would start is kept from starting (policy-rc.d: Debian's own way to say "install, do not
# start"; removed again on the way out). nginx-light where Debian still has it (bookworm),
# else nginx (trixie folded the flavours into one package).
# Idempotent: prints nothing when nginx is already there.
set -euo pipefail

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "==> nginx is missing and this is not root on Debian:" \
       "the replicas benchmark will report that it has no load balancer" >&2
  exit 0
fi

echo "==> installing nginx from Debian's packages for the replicas benchmark"
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
# shellcheck source=scripts/debian-service.sh
source "$(dirname "$0")/debian-service.sh"
hold_service_start
apt-get update >/dev/null
package=nginx
if apt-cache show nginx-light >/dev/null 2>&1; then
  package=nginx-light
fi
if ! apt-get install -y --no-install-recommends "$package"; then
  echo "==> could not install $package from Debian's packages: the replicas benchmark" \
       "will say so" >&2
  exit 0
fi
echo "    $(/usr/sbin/nginx -v 2>&1) ready after $(( $(date +%s) - start ))s"
