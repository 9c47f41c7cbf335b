"""What the HTTP edge lets in before any handler runs: client address, Origin, Host, body type.

The policy (README "Safe by default", docs/configuration.md "Security policy"):

- **Client address**: the TCP peer, unless the peer is one of ``trusted_proxies``; only then is
  ``X-Forwarded-For`` believed (read from the right, skipping trusted hops). A request that
  carries forwarding headers from an untrusted peer is marked, so that a reverse proxy on
  this host nobody declared does not make every remote client look like loopback.
- **Origin**: a browser names the page that sent a request. Any Origin other than the
  server's own (same host and port as the ``Host`` header) or one of ``allowed_origins`` is
  refused (403), so a page on another site cannot drive the API from an operator's browser.
- **Host**: a request that no credential protects (no API keys exist, an admin path without
  ``admin_key``, the console, health and metrics) must name this server: an IP address,
  ``localhost`` / ``*.localhost``, or one of ``allowed_hosts`` (421 otherwise). A DNS
  rebinding page reaches the server under its own host name, and is refused here.
- **Body type**: POST, PUT and PATCH under ``/v1/`` carry ``application/json`` (or no body at
  all); a form or ``text/plain`` body, which a browser sends cross-site without asking, is
  refused (415).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from nobusy.settings import Settings

__all__ = ["EdgePolicy", "host_name", "is_ip_address", "is_json", "is_loopback"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# Parsing an address costs microseconds on every request; clients and host names repeat.
@functools.lru_cache(maxsize=4096)
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_name(host: str) -> str:
    """The name in a ``Host`` header or an origin's authority: no port, brackets, case or dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_json(content_type: str) -> bool:
    """``application/json``, ``application/json; charset=utf-8`` or ``application/*+json``."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


@dataclass(frozen=True, slots=True)
class EdgePolicy:
    """The Host, Origin and proxy rules of one server, built once from its settings."""

    hosts: frozenset[str]
    any_host: bool
    origins: frozenset[str]
    any_origin: bool
    proxies: tuple[_Network, ...]
    any_proxy: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgePolicy:
        return cls.build(settings.allowed_hosts, settings.allowed_origins, settings.trusted_proxies)

    @classmethod
    def build(
        cls, hosts: Iterable[str] = (), origins: Iterable[str] = (), proxies: Iterable[str] = ()
    ) -> EdgePolicy:
        hosts, origins, proxies = list(hosts), list(origins), list(proxies)
        return cls(
            hosts=frozenset(host_name(h) if h[:1] != "." else h.lower() for h in hosts),
            any_host="*" in hosts,
            origins=frozenset(o.strip().lower().rstrip("/") for o in origins),
            any_origin="*" in origins,
            proxies=tuple(ipaddress.ip_network(p, strict=False) for p in proxies if p != "*"),
            any_proxy="*" in proxies,
        )

    def host_allowed(self, host: str | None) -> bool:
        """Whether a ``Host`` header names this server (no header: HTTP/1.0, not a browser)."""
        if host is None or self.any_host:
            return True
        name = host_name(host)
        if is_ip_address(name) or name == "localhost" or name.endswith(".localhost"):
            # RFC 6761: .localhost names are loopback and no outside DNS answers for them;
            # an IP address cannot be rebound.
            return True
        if name in self.hosts:
            return True
        return any(
            entry[:1] == "." and (name.endswith(entry) or name == entry[1:]) for entry in self.hosts
        )

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a browser's ``Origin`` is this server itself or a configured one."""
        if self.any_origin:
            return True
        origin = origin.strip().lower().rstrip("/")
        if origin in self.origins:
            return True
        scheme, sep, authority = origin.partition("://")
        # The console's own pages: the origin's host and port are the ones the browser
        # connected to, which it also put in Host. "null" (a sandbox, a file) never matches.
        return bool(sep) and scheme in ("http", "https") and authority == (host or "").lower()

    def trusts(self, address: str) -> bool:
        if self.any_proxy:
            return True
        if not self.proxies:  # the default: no proxy is trusted, nothing to parse
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.proxies)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: the peer, or what trusted proxies say they were sent by."""
        if forwarded_for is None or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):  # the right end was written by our own proxies
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer
