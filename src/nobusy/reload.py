"""Reload: a changed configuration applied to a running server, without dropping a stream.

A reload builds a new frozen ``Settings`` from the sources the server started from (the config
file, the managed overlay, ``NOBUSY_*`` variables, the flags it was given) and swaps the
routing table (``Router.retable``): upstreams and aliases. An upstream whose definition did not
change keeps its object and state (circuit, adaptive limit, metrics poller, streams); one
added or redefined is built and started first, so a broken one refuses the reload instead of
half-applying it; one removed or redefined takes no new request and is closed once the
attempts running on it end. A config that does not load is refused with the message
``nobusy check`` gives, and the running table stays. Other settings (port, workers, stores,
...) cannot change in a running process: they are reported as needing a restart, and the
process keeps its own.

Triggers: SIGHUP (``reload_on_sighup``; with ``--workers N`` uvicorn's parent passes it to
every worker, ``nobusy.edge.server``), ``nobusy reload`` and ``POST /v1/nobusy/reload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from nobusy.errors import ConfigError
from nobusy.routing.checks import Prober
from nobusy.routing.router import Retired, Router
from nobusy.settings import Settings, load_settings
from nobusy.upstreams import build_upstream
from nobusy.upstreams.base import Upstream, UpstreamSettings

__all__ = ["LIVE", "Outcome", "Reloader", "SettingsSource", "reload_on_sighup", "tell_workers"]

log = logging.getLogger("nobusy.reload")

# The settings a running process takes from a reload; any other that differs needs a restart.
LIVE = ("upstreams", "models", "managed_file")

_RETIRE_POLL = 0.1  # seconds between looks at a retired upstream's running attempts


@dataclass(frozen=True, slots=True)
class SettingsSource:
    """Where the server's settings came from, so that a reload reads the same sources."""

    config_file: Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)  # the flags given to `serve`

    def load(self, managed: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
        return load_settings(self.config_file, managed=managed, **self.overrides)


@dataclass(slots=True)
class Outcome:
    """What one reload did."""

    added: list[str]
    removed: list[str]
    changed: list[str]
    kept: list[str]
    aliases: list[str]
    needs_restart: list[str]
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "object": "nobusy.reload",
            "upstreams": {
                "added": self.added,
                "removed": self.removed,
                "changed": self.changed,
                "kept": self.kept,
            },
            "aliases": self.aliases,
            "needs_restart": self.needs_restart,
            "seconds": round(self.seconds, 4),
        }


def _definition(spec: UpstreamSettings) -> UpstreamSettings:
    # Enabling or disabling an upstream is not a new definition: its state stays.
    return spec.model_copy(update={"enabled": True})


class Reloader:
    """Applies new settings to a running app, one reload at a time."""

    def __init__(
        self,
        source: SettingsSource | None,
        router: Router,
        prober: Prober,
        on_applied: Callable[[Settings], None] = lambda _: None,
    ) -> None:
        self.source = source
        self.router = router
        self.prober = prober
        self.on_applied = on_applied  # the app's other holders of the settings
        self.reloads = 0
        self._lock = asyncio.Lock()
        self.editing = asyncio.Lock()  # one edit of the managed overlay at a time (api.managed)
        self._retiring: set[asyncio.Task[None]] = set()
        # Upstreams retiring, by name: one removed, added back and removed again has two, and
        # its slots are dropped only when the last one's attempts have ended.
        self._pending: dict[str, int] = {}

    def load(self, managed: Mapping[str, Mapping[str, Any]] | None = None) -> Settings:
        """The settings the sources give now (ConfigError, ``nobusy check``'s message)."""
        if self.source is None:
            raise ConfigError("this server was started from a settings object: nothing to reload")
        return self.source.load(managed)

    async def reload(self, settings: Settings | None = None) -> Outcome:
        """Build the settings from the sources again (or take ``settings``) and apply them."""
        async with self._lock:
            started = time.perf_counter()
            new = settings if settings is not None else self.load()
            outcome = await self._apply(new)
            outcome.seconds = time.perf_counter() - started
            self.reloads += 1
        log.info(
            "reloaded in %.3fs: upstreams added %s, removed %s, changed %s; %s",
            outcome.seconds,
            outcome.added or "none",
            outcome.removed or "none",
            outcome.changed or "none",
            f"needs restart: {', '.join(outcome.needs_restart)}"
            if outcome.needs_restart
            else "nothing needs a restart",
        )
        return outcome

    async def _apply(self, new: Settings) -> Outcome:
        router = self.router
        old = router.settings
        restart = [
            name
            for name in Settings.model_fields
            if name not in LIVE and getattr(old, name) != getattr(new, name)
        ]
        live = old.model_copy(
            update={
                "upstreams": new.upstreams,
                "models": new.models,
                "managed_file": new.managed_file,
            }
        )
        before, after = old.upstreams, new.upstreams
        kept = [n for n in after if n in before and _definition(before[n]) == _definition(after[n])]
        changed = [n for n in after if n in before and n not in kept]
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        built = await _start({n: after[n] for n in (*added, *changed)})
        for name in added:
            spec = after[name]
            if old.state is not None and (spec.max_concurrency or spec.rpm or spec.tpm):
                # Leases in Redis are set up at start: until then this replica counts alone.
                restart.append(f"upstreams.{name} (its limits are counted per replica)")
        retired = router.retable(live, built)  # no await: requests see the old or new table
        for pair in retired:
            self._pending[pair[0].name] = self._pending.get(pair[0].name, 0) + 1
            task = asyncio.create_task(self._retire(pair), name=f"nobusy-retire-{pair[0].name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        await self.prober.restart()
        self.on_applied(live)
        aliases = sorted(set(old.models) ^ set(new.models) | _changed_aliases(old, new))
        return Outcome(added, removed, changed, kept, aliases, restart)

    async def _retire(self, retired: Retired) -> None:
        """Close an upstream taken out of the table once no attempt runs on it."""
        upstream, stats = retired
        while stats.in_flight > 0:
            await asyncio.sleep(_RETIRE_POLL)
        log.info("upstream %s retired: its last attempt has ended", upstream.name)
        name = upstream.name
        try:
            await upstream.aclose()
        finally:
            self._pending[name] -= 1
            if not self._pending[name]:
                del self._pending[name]
                self.router.forget(name)

    async def aclose(self) -> None:
        """At shutdown the drain has run: close what is still retiring now."""
        for task in list(self._retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _start(specs: Mapping[str, UpstreamSettings]) -> dict[str, Upstream]:
    """Build and start the new upstreams; if one fails, close them all and refuse."""
    built = {name: build_upstream(name, spec) for name, spec in specs.items()}
    try:
        for upstream in built.values():
            await upstream.start()
    except Exception as exc:
        await asyncio.gather(*(u.aclose() for u in built.values()), return_exceptions=True)
        raise ConfigError(f"an upstream of the new config did not start: {exc}") from None
    return built


def _changed_aliases(old: Settings, new: Settings) -> set[str]:
    return {a for a in set(old.models) & set(new.models) if old.models[a] != new.models[a]}


def tell_workers(settings: Settings) -> None:
    """With ``--workers N``, a reload one worker applied (an admin route) reaches the others:
    SIGHUP to uvicorn's parent, which passes it to every worker (this one reloads again,
    finding nothing changed)."""
    if settings.workers > 1:
        os.kill(os.getppid(), signal.SIGHUP)


@contextlib.contextmanager
def reload_on_sighup(reloader: Reloader) -> Iterator[None]:
    """While serving, SIGHUP reloads; a config that does not load is logged and refused.
    Entered in the lifespan, on the main thread, like ``nobusy.edge.drain``'s handlers."""
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGHUP)
    running: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        try:
            await reloader.reload()
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays: %s", exc.message)

    def signalled() -> None:
        task = loop.create_task(reload(), name="nobusy-reload")
        running.add(task)
        task.add_done_callback(running.discard)

    def handler(sig: int, frame: FrameType | None) -> None:
        # A signal handler may run between any two bytecodes of the loop: only schedule.
        loop.call_soon_threadsafe(signalled)

    signal.signal(signal.SIGHUP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous or signal.SIG_DFL)
        for task in running:
            task.cancel()
