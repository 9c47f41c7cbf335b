# Sourced by the scripts that install a Debian package whose system service nobusy never uses
# (install-redis.sh, install-lb.sh): the tests and the bench start private instances of their
# own, on free ports.

# Keep the package's service from starting while it installs: a policy-rc.d that says no is
# Debian's own way to say "install, do not start"; removed again when the script exits.
hold_service_start() {
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
}
