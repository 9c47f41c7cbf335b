"""Running the app: uvicorn with uvloop and httptools, safe binding, and limits on headers.

uvicorn has no limit on how long a client may take to send its headers, nor on how large or
how many they are: a few hundred connections trickling one byte at a time would hold the
server, and four 16 MiB headers took 485 MiB. ``GuardedHttpToolsProtocol`` closes a connection
whose headers are not complete within ``header_timeout``, and answers 431 once a request's
line and headers pass ``max_header_bytes`` or ``max_headers``, before parsing any further.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import logging.config
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from nobusy.edge.policy import is_loopback
from nobusy.errors import ConfigError, HeadersTooLarge
from nobusy.reload import SettingsSource
from nobusy.settings import Settings

__all__ = [
    "PID_FILE",
    "GuardedHttpToolsProtocol",
    "check_bind",
    "configure_logging",
    "run",
    "uvicorn_config",
]


# Seconds a refused connection's input is read and dropped before it is closed.
_LINGER = 2.0


class _TooManyHeaders(Exception):
    pass


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a deadline and size limits for each request's head."""

    _header_timer: asyncio.TimerHandle | None = None
    # Bytes the current request's line and headers may still take; None once they are read.
    _head_left: int | None = None
    _header_count = 0
    _discarding = False
    _limit_bytes = 64 * 1024
    _limit_headers = 100

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Read once per connection: on_header runs for every header of every request.
        self._limit_bytes = int(getattr(self.config, "max_header_bytes", 64 * 1024))
        self._limit_headers = int(getattr(self.config, "max_headers", 100))
        self._arm_header_timer()
        self._head_left = self._max_header_bytes()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        # httptools buffers a header whole before calling back, so its size is capped here,
        # on the raw bytes, by feeding the parser no more than the head may still take.
        while data:
            left = self._head_left
            if left is None or len(data) <= left:
                if left is not None:
                    self._head_left = left - len(data)
                self._feed(data)
                return
            piece, data = data[:left], data[left:]
            self._head_left = 0
            self._feed(piece)
            if self.transport.is_closing():
                return
            if self._head_left is not None:  # the head is still not complete
                self._refuse_head(f"larger than {self._max_header_bytes()} bytes")
                return

    def _feed(self, data: bytes) -> None:
        # uvicorn's data_received, but a header over the count limit is answered 431, not 400.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._header_count > self._max_headers():
                self._refuse_head(f"more than {self._max_headers()} headers")
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        if self._head_left is None:  # a pipelined request after a body in the same read
            self._head_left = self._max_header_bytes()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._max_headers():
            raise _TooManyHeaders  # stops the parser; _feed answers 431
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._head_left = None
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this keep-alive connection
            self._head_left = self._max_header_bytes()

    def _max_header_bytes(self) -> int:
        return self._limit_bytes

    def _max_headers(self) -> int:
        return self._limit_headers

    def _refuse_head(self, what: str) -> None:
        error = HeadersTooLarge(f"The request line and headers are {what}.")
        body = orjson.dumps(error.body())
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        # Closing a socket with unread input makes the kernel send a reset, which can destroy
        # the answer before the client reads it: half-close, drop what still comes, close
        # shortly after (nginx's lingering close).
        self._discarding = True
        self._disarm_header_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER, self.transport.close)

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


def check_bind(settings: Settings, has_keys: bool = False) -> None:
    """Refuse a non-loopback address unless API keys exist or ``--insecure`` was given."""
    if is_loopback(settings.host) or has_keys or settings.insecure:
        return
    raise ConfigError(
        f"refusing to listen on {settings.host}: without API keys anyone who can reach it can "
        "use your upstreams. Create keys, bind 127.0.0.1, or pass --insecure."
    )


def uvicorn_config(settings: Settings, source: SettingsSource | None = None) -> uvicorn.Config:
    """uvicorn's Config for these settings; with several workers the app is a factory, so that
    each worker process builds its own. ``source``: where the settings came from (reload)."""
    config = uvicorn.Config(
        _app_factory(settings, source) if settings.workers > 1 else _single_app(settings, source),
        factory=settings.workers > 1,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        ws="none",
        lifespan="on",
        access_log=False,  # nobusy.edge.access writes one line per request instead
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        timeout_keep_alive=5,
        # Only after nobusy's own drain (nobusy.edge.drain), which keeps the socket answering
        # while requests finish: by then nothing runs, unless a second Ctrl+C skipped it.
        timeout_graceful_shutdown=10,
        # X-Forwarded-For is believed only from trusted_proxies, by nobusy's own middleware
        # (uvicorn would believe any loopback peer, so a local client could pick its address).
        proxy_headers=False,
        # uvicorn kills a worker that does not answer its ping within this; its 5 s default
        # killed workers still importing on a loaded 2-core machine, over and over, while
        # another worker took up ingestion at start (tests/api/test_knowledge_workers.py).
        timeout_worker_healthcheck=30,
    )
    # Read by GuardedHttpToolsProtocol; attributes (not class variables) so that they
    # travel with the config to worker processes.
    config.header_timeout = settings.header_timeout  # type: ignore[attr-defined]
    config.max_header_bytes = settings.max_header_bytes  # type: ignore[attr-defined]
    config.max_headers = settings.max_headers  # type: ignore[attr-defined]
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


def _single_app(settings: Settings, source: SettingsSource | None) -> Any:
    from nobusy.app import create_app

    return create_app(settings, drain_signals=True, source=source)


def _app_factory(settings: Settings, source: SettingsSource | None) -> functools.partial[Any]:
    """``create_app`` bound to the resolved settings, whole. uvicorn pickles its config into
    each spawned worker, so a worker gets these very settings, secrets included, over the
    spawn pipe rather than the environment (which a worker's children would inherit too)."""
    from nobusy.app import create_app

    return functools.partial(create_app, settings, drain_signals=True, source=source)


def run(
    settings: Settings, config_file: Path | None = None, source: SettingsSource | None = None
) -> None:
    """Serve until interrupted. With several workers each process builds its own app."""
    from nobusy.edge.auth import hashers_for
    from nobusy.store.backends import open_keys
    from nobusy.store.redis_client import check_state

    store = open_keys(settings, hashers_for(settings.crypto))
    try:
        check_bind(settings, has_keys=store.any_keys())
        active = store.active_count()
        any_keys = store.any_keys()
    finally:
        store.close()
    configure_logging(settings.log_level)
    check_state(settings)
    _startup_lines(settings, config_file, active, any_keys)
    config = uvicorn_config(settings, source)
    server = uvicorn.Server(config)
    with _pid_file(settings.data_dir):
        if settings.workers > 1:
            _Supervisor(config, sockets=[config.bind_socket()]).run()
        else:
            with _exit_zero_after_stop():
                server.run()


PID_FILE = "nobusy.pid"


@contextlib.contextmanager
def _pid_file(data_dir: Path) -> Iterator[None]:
    """``data_dir/nobusy.pid`` names the process ``nobusy reload`` sends SIGHUP to (with
    ``--workers N``, uvicorn's parent, which passes it on)."""
    path = data_dir / PID_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()


class _Supervisor(Multiprocess):
    """uvicorn's parent of ``--workers N``, but SIGHUP reloads each worker's configuration
    (``nobusy.reload``) instead of restarting the workers, which would end their streams."""

    def handle_hup(self) -> None:
        logging.getLogger("nobusy").info("SIGHUP: each worker reloads its configuration")
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # one being restarted
                    os.kill(process.pid, signal.SIGHUP)


@contextlib.contextmanager
def _exit_zero_after_stop() -> Iterator[None]:
    """Once down, uvicorn raises the signal it stopped for again, for the handler it found:
    SIGTERM would then kill the process and SIGINT raise KeyboardInterrupt. For ``nobusy
    serve`` a stop that has drained (``nobusy.edge.drain``) is a clean exit, status 0.
    (uvicorn's parent of ``--workers N`` exits 0 by itself.)"""
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(sig: int, frame: FrameType | None) -> None:
    """The server has stopped and drained: nothing is left to do."""
