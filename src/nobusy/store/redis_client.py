"""The Redis that ``state`` names: its URL shown without secrets, a client, a start-up check.

redis-py's errors enter nobusy here and in the other ``nobusy.store.redis_*`` modules, and
nowhere else; ``ERRORS`` is the tuple they catch. A URL's password never leaves this module in
text: every message names the URL through ``redact`` and passes redis-py's own words through
``scrub``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.retry import Retry

from nobusy.errors import ConfigError
from nobusy.settings import Settings
from nobusy.store.health import Health

__all__ = [
    "ERRORS",
    "LUA_CLOCK",
    "Script",
    "bounded",
    "check_state",
    "connect",
    "probe",
    "redact",
    "replica_name",
    "scrub",
]

T = TypeVar("T")

# The prelude of every Lua script that needs the time: Redis's clock, so that replicas whose
# clocks differ share one window; ``at`` formats a time as a sorted-set score.
LUA_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function at(x) return string.format('%.6f', x) end
"""

ERRORS = (RedisError, OSError)
# Short: on loopback or a LAN Redis answers in well under a millisecond, and a request waiting
# on a dead one is a request not served by the local fallback.
CONNECT_TIMEOUT = 0.5
COMMAND_TIMEOUT = 1.0


def redact(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` parameter) as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        # A lone userinfo is a username to redis-py, but some write the password there.
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = urlencode(
        [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*"
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, url: str) -> str:
    """``text`` (a foreign error's words) with any secret of ``url`` replaced by ``***``."""
    parts = urlsplit(url)
    secrets = [parts.password, parts.username if parts.password is None else None]
    secrets += [v for k, v in parse_qsl(parts.query) if k == "password"]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def replica_name(settings: Settings) -> str:
    """This process's replica id: the ``replica_id`` setting, else ``HOSTNAME-PID``."""
    return settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"


def connect(url: str) -> redis.asyncio.Redis:
    """An asyncio client with a short connect timeout and one immediate retry (a pooled
    connection that a restarted Redis closed fails once, then reconnects); RESP2, which every
    supported Redis and Valkey speaks, whatever redis-py's own default. Commands are bounded
    by ``bounded`` and ``Script``, not by a ``socket_timeout``: with one, redis-py writes each
    command through ``asyncio.wait_for``, a task and two turns of the event loop per write,
    which measured 0.15 ms of the 0.4 ms a script call took inside a busy server."""
    return redis.asyncio.Redis.from_url(
        url,
        protocol=2,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=AsyncRetry(NoBackoff(), 1),
    )


async def bounded(command: Awaitable[T]) -> T:
    """``command``'s answer, or TimeoutError (an OSError, so among ``ERRORS``) after
    ``COMMAND_TIMEOUT``: a Redis that stopped answering must not hold a request. redis-py
    drops a connection whose command was cancelled, so no late answer is read as another's."""
    async with asyncio.timeout(COMMAND_TIMEOUT):
        return await command


class Script:
    """A Lua script run by EVALSHA (loaded again by redis-py if Redis lost it), ``bounded``."""

    def __init__(self, client: redis.asyncio.Redis, source: str) -> None:
        self._script = client.register_script(source)

    async def __call__(self, keys: Sequence[str], args: Sequence[str | int | float] = ()) -> Any:
        return await bounded(self._script(keys=list(keys), args=list(args)))


def check_state(settings: Settings) -> None:
    """At start: refuse a Redis that is wrong (password, cluster mode) with a clear message;
    one that does not answer too, unless ``on_state_failure`` is ``local``."""
    if settings.state is None:
        return
    url = settings.state.get_secret_value()
    shown = redact(url)
    try:
        client = redis.Redis.from_url(
            url,
            protocol=2,
            socket_connect_timeout=2,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise ConfigError(
            f"state: {shown} is not a Redis URL ({scrub(str(exc), url)}); write "
            "redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://... for TLS"
        ) from None
    try:
        info = client.info("cluster")
    except (AuthenticationError, AuthorizationError) as exc:
        raise ConfigError(
            f"Redis at {shown} refused nobusy's credentials ({scrub(str(exc), url)}): check "
            "the user and password in state (NOBUSY_STATE)"
        ) from None
    except ERRORS as exc:
        what = f"cannot reach Redis at {shown} ({scrub(str(exc), url)})"
        if settings.on_state_failure == "local":
            logging.getLogger("nobusy").warning(
                "%s: starting with local key limits until it answers", what
            )
            return
        raise ConfigError(
            f"{what}: check that redis-server runs there and accepts this host (bind, "
            "protected-mode, firewall; TLS needs rediss://), or set on_state_failure: local "
            "to serve with local key limits meanwhile"
        ) from None
    finally:
        client.close()
    if info.get("cluster_enabled"):
        raise ConfigError(
            f"Redis at {shown} runs in cluster mode, which nobusy does not support yet: "
            "point state at a standalone Redis or Valkey primary"
        )


def probe(settings: Settings) -> Health | None:
    """``nobusy check``: does the Redis of ``state`` answer, which version, how many replicas
    beat on it now (None without ``state``)."""
    if settings.state is None:
        return None
    url = settings.state.get_secret_value()
    shown = redact(url)
    started = time.perf_counter()
    try:
        client = redis.Redis.from_url(
            url, protocol=2, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as exc:
        return Health("redis", shown, "down", f"not a Redis URL ({scrub(str(exc), url)})")
    try:
        info = client.info("server") | client.info("cluster")
        # The heartbeats' sorted set (nobusy.store.redis_limits.REPLICAS), read without a
        # script: a beat older than LIVE seconds may still be counted.
        beating = client.zcard("nobusy:replicas")
    except (AuthenticationError, AuthorizationError) as exc:
        detail = f"refused nobusy's credentials ({scrub(str(exc), url)}): check state's password"
        return Health("redis", shown, "down", detail)
    except ERRORS as exc:
        return Health("redis", shown, "down", f"does not answer ({scrub(str(exc), url)})")
    finally:
        client.close()
    latency = (time.perf_counter() - started) * 1000
    if info.get("cluster_enabled"):
        detail = "runs in cluster mode, which nobusy does not support yet"
        return Health("redis", shown, "down", detail, latency_ms=latency)
    detail = f"Redis {info.get('redis_version', '?')}, {beating} replica(s) beating"
    return Health("redis", shown, "ok", detail, latency_ms=latency)
