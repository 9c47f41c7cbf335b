"""Who is asking: API keys checked before a request's body is read, failures rate-limited.

While no key exists the service is open (on loopback, or with ``--insecure``). Once any key exists
every request under ``/v1/`` needs one, except the admin endpoints (``/v1/nobusy/``), which take
``admin_key`` instead (``check_admin``). A client address that keeps presenting bad keys, API or
admin, is answered 429 instead of 401 once it passes its allowance, while a valid key from the same
address (a shared NAT) still gets through: a key lookup is one hash, so refusing early would save
little and would let one bad client lock out its neighbours. The address is the TCP peer's unless
it is a trusted proxy (``nobusy.edge.policy``), so a forged X-Forwarded-For does not buy a fresh
allowance per request.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict

from pydantic import SecretStr

from nobusy.edge.policy import is_loopback
from nobusy.errors import AdminAuthRequired, InvalidApiKey, RateLimited
from nobusy.keys import Hasher, Key, sha256_hasher, sm3_hasher
from nobusy.store.keys import KeyStore
from nobusy.store.sessions import SessionStore

__all__ = ["SESSION_COOKIE", "Authenticator", "hashers_for"]

# The console's sign-in cookie (nobusy.web.session): HttpOnly, SameSite=Strict.
SESSION_COOKIE = "nobusy_session"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Failed attempts a client address may make per minute before it is turned away unchecked.
_FAILURES_PER_MINUTE = 20
_TRACKED_ADDRESSES = 10_000


def hashers_for(crypto: str) -> tuple[Hasher, ...]:
    """New keys are hashed with the suite's hash; keys made under the other still verify."""
    return (sm3_hasher, sha256_hasher) if crypto == "gm" else (sha256_hasher, sm3_hasher)


class Authenticator:
    """Checks the ``Authorization`` header against the key store."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self.sessions: SessionStore | None = None  # set by state.running: console sign-ins

    def signed_in(self, cookie: str | None, method: str, origin: str | None) -> bool:
        """Whether a console session cookie stands for the admin key on this request.

        A state-changing request must also name its page's origin (the edge has refused any
        origin but this server's): with SameSite=Strict, that is the CSRF defence.
        """
        if not cookie or self.sessions is None:
            return False
        if method not in _SAFE_METHODS and not origin:
            return False
        return self.sessions.valid(cookie)

    def check_admin(
        self, authorization: str, client: str, admin_key: SecretStr | None, proxied: bool
    ) -> None:
        """Pass the admin key's holder (with no admin key: a loopback client not behind an
        undeclared proxy); AdminAuthRequired or RateLimited otherwise."""
        if admin_key is None:
            if proxied or not is_loopback(client):
                raise AdminAuthRequired(
                    "Admin endpoints need admin_key to be set for remote use (a request "
                    "forwarded by a proxy not in trusted_proxies counts as remote)."
                )
            return
        scheme, _, given = authorization.partition(" ")
        given = given.strip()
        expected = admin_key.get_secret_value()
        # An empty secret never matches, whatever the setting holds.
        if scheme.lower() == "bearer" and given and expected:
            if hmac.compare_digest(given.encode(), expected.encode()):
                return
        self._refuse_if_flooding(client)
        self._failed(client)
        raise AdminAuthRequired("This endpoint needs the admin key: Authorization: Bearer KEY.")

    def check(self, authorization: str, client: str) -> Key | None:
        """The caller's key; None while no key exists; InvalidApiKey or RateLimited otherwise."""
        if not self.keys.any_keys():
            return None
        scheme, _, secret = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer" or not secret.strip():
                raise InvalidApiKey(
                    "This service needs an API key: send it as 'Authorization: Bearer nb-...' "
                    "(or 'x-api-key: nb-...')."
                )
            return self.keys.authenticate(secret.strip())
        except InvalidApiKey:
            self._refuse_if_flooding(client)
            self._failed(client)
            raise

    def _refuse_if_flooding(self, client: str) -> None:
        times = self._failures.get(client)
        if not times:
            return
        horizon = time.monotonic() - 60
        while times and times[0] < horizon:
            times.pop(0)
        if len(times) >= _FAILURES_PER_MINUTE:
            raise RateLimited(
                f"Too many failed authentications from {client}: try again in a minute.",
                retry_after=max(1.0, times[0] + 60 - time.monotonic()),
            )

    def _failed(self, client: str) -> None:
        failures = self._failures
        failures.setdefault(client, []).append(time.monotonic())
        failures.move_to_end(client)
        while len(failures) > _TRACKED_ADDRESSES:  # bounded: a spoofed flood cannot fill memory
            failures.popitem(last=False)
