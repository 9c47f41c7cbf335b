"""Running the app: uvicorn with uvloop and httptools, safe binding, and a header timeout.

uvicorn has no limit on how long a client may take to send its headers, so a few hundred
connections trickling one byte at a time would hold the server; ``GuardedHttpToolsProtocol``
closes a connection whose headers are not complete within ``header_timeout``.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import logging.config
import os
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from nobusy.errors import ConfigError
from nobusy.settings import Settings

__all__ = [
    "GuardedHttpToolsProtocol",
    "check_bind",
    "configure_logging",
    "is_loopback",
    "run",
    "uvicorn_config",
]


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a deadline for each request's headers."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        timeout = getattr(self.config, "header_timeout", 10.0)
        self._header_timer = self.loop.call_later(timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, has_keys: bool = False) -> None:
    """Refuse a non-loopback address unless API keys exist or ``--insecure`` was given."""
    if is_loopback(settings.host) or has_keys or settings.insecure:
        return
    raise ConfigError(
        f"refusing to listen on {settings.host}: without API keys anyone who can reach it can "
        "use your upstreams. Create keys, bind 127.0.0.1, or pass --insecure."
    )


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    """uvicorn's Config for these settings; the app is a factory so workers build their own."""
    config = uvicorn.Config(
        "nobusy.app:create_app_from_env" if settings.workers > 1 else _single_app(settings),
        factory=settings.workers > 1,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        ws="none",
        lifespan="on",
        access_log=False,  # nobusy.access writes one line per request instead
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )
    # Read by GuardedHttpToolsProtocol; an attribute (not a class variable) so that it
    # travels with the config to worker processes.
    config.header_timeout = settings.header_timeout  # type: ignore[attr-defined]
    return config


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus nobusy's loggers: one line per event on stderr.

    Given to uvicorn rather than set up once here, because with several workers each process
    applies it itself (a spawned worker inherits no handlers).
    """
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["nobusy"] = {"format": LOG_FORMAT}
    config["handlers"]["nobusy"] = {
        "class": "logging.StreamHandler",
        "formatter": "nobusy",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["nobusy"] = {
        "handlers": ["nobusy"],
        "level": level.upper(),
        "propagate": False,
    }
    # httpx logs every request at INFO: noise, and a cost on every request.
    config["loggers"]["httpx"] = {"level": "WARNING"}
    return config


def configure_logging(level: str) -> None:
    """Apply ``log_config`` in this process (the start-up lines come before uvicorn's own)."""
    logging.config.dictConfig(log_config(level))


def _startup_lines(
    settings: Settings, config_file: Path | None, active: int, any_keys: bool
) -> None:
    """What an operator needs first: where to send requests, where the console is, and who
    may use it. Logged only once every check has passed."""
    log = logging.getLogger("nobusy")
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    base = f"http://{shown}:{settings.port}"
    log.info(
        "serving %s at %s/v1 (%d worker%s)",
        ", ".join(settings.models),
        base,
        settings.workers,
        "" if settings.workers == 1 else "s",
    )
    log.info("console: %s/", base)
    source = f"config {config_file}" if config_file else "no config file"
    log.info("data dir: %s (%s)", settings.data_dir.resolve(), source)
    if not any_keys:
        log.info("API keys: none, so no key is needed (loopback only unless --insecure)")
    elif active:
        log.info("API keys: %d active; every request needs one", active)
    else:
        log.warning(
            "API keys: none active, so every request is refused; create one with "
            "`nobusy keys create --name NAME`"
        )


def _single_app(settings: Settings) -> Any:
    from nobusy.app import create_app

    return create_app(settings)


def run(settings: Settings, config_file: Path | None = None) -> None:
    """Serve until interrupted. With several workers each process builds its own app."""
    from nobusy.auth import hashers_for
    from nobusy.keys import KeyStore

    store = KeyStore(settings.data_dir, hashers_for(settings.crypto))
    try:
        check_bind(settings, has_keys=store.any_keys())
        active = store.active_count()
        any_keys = store.any_keys()
    finally:
        store.close()
    configure_logging(settings.log_level)
    _startup_lines(settings, config_file, active, any_keys)
    if settings.workers > 1:
        # Workers rebuild the settings from the environment: hand them the CLI's choices.
        for name in (
            "host",
            "port",
            "workers",
            "data_dir",
            "log_level",
            "max_body_bytes",
            "header_timeout",
            "body_timeout",
            "insecure",
        ):
            os.environ[f"NOBUSY_{name.upper()}"] = str(getattr(settings, name))
        if config_file is not None:
            os.environ["NOBUSY_CONFIG"] = str(config_file.resolve())
    config = uvicorn_config(settings)
    server = uvicorn.Server(config)
    if settings.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        server.run()
