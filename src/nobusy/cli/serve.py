"""``nobusy serve``, ``nobusy models`` and ``nobusy check``: run and inspect a configuration."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nobusy.cli.errors import CliError
from nobusy.cli.options import config_option, data_dir_option, given, setting_flags, settings_for
from nobusy.errors import ConfigError
from nobusy.routing.checks import probe_answer
from nobusy.routing.continuation_probe import check_continuations
from nobusy.settings import Settings
from nobusy.store.health import Health
from nobusy.upstreams import build_upstream
from nobusy.upstreams.base import Probe, Upstream

__all__ = ["PROBES", "check", "models", "reload", "serve"]

# The shared backends ``check`` probes: name -> "module:function", the function taking the
# Settings and returning a ``nobusy.store.health.Health``, or None when that backend is not
# configured. Import strings: a driver is imported only when probed.
PROBES: dict[str, str] = {
    "redis": "nobusy.store.redis_client:probe",
    "postgresql": "nobusy.store.postgres:probe",
}

_settings = settings_for


@click.command(
    epilog="Each flag is also a key of the config file and a NOBUSY_* environment variable: "
    "--data-dir is data_dir and NOBUSY_DATA_DIR. A flag beats the variable, the variable beats "
    "the file. Secrets have no flag: set NOBUSY_ADMIN_KEY and NOBUSY_STATE (a Redis URL with its "
    "password), or admin_key and state in the file. Nested "
    "settings (upstreams, models, audit, guard) are set in the file; see docs/configuration.md."
)
@config_option
@setting_flags
@click.pass_context
def serve(ctx: click.Context, /, config_file: Path | None, **flags: Any) -> None:
    """Run the OpenAI-compatible service."""
    overrides = given(ctx, flags)
    settings = _settings(config_file, **overrides)
    from nobusy.edge.server import run
    from nobusy.reload import SettingsSource

    # The start-up lines (addresses, console) are logged by `run` once the settings and the
    # address have passed every check: nothing says "serving" before a refusal.
    try:
        run(settings, config_file, SettingsSource(config_file, overrides))
    except ConfigError as exc:
        raise CliError(exc.message, "see `nobusy serve --help`") from None


@click.command()
@config_option
def models(config_file: Path | None) -> None:
    """List model aliases and the routes behind each."""
    settings = _settings(config_file)
    table = Table(title="Model aliases")
    table.add_column("alias", style="bold")
    table.add_column("routes (in order)")
    table.add_column("overflow")
    for alias, spec in settings.models.items():
        table.add_row(
            alias, "\n".join(str(r) for r in spec.routes), "\n".join(str(r) for r in spec.overflow)
        )
    Console().print(table)


@click.command()
@config_option
@click.option(
    "--url",
    default=None,
    help="A running nobusy to ask for circuits and last outcomes (default: the config's port).",
)
@click.option("--admin-key", default=None, help="Its admin key (default: the config's admin_key).")
def check(config_file: Path | None, url: str | None, admin_key: str | None) -> None:
    """Validate the config, probe the shared backends (Redis) and every upstream with a
    one-token answer, and show a running server's circuits; exit 1 if a backend does not
    answer, or any upstream is down or its circuit is open."""
    settings = _settings(config_file)
    backends_down = _check_backends(settings)
    results, continuations = asyncio.run(_probe_all(settings))
    live = _live_circuits(settings, url, admin_key)
    # The circuit columns come from the running server; the caption says so, so the headers
    # stay short enough for an 80-column terminal.
    table = Table(
        title="Upstreams", caption="circuit, last outcome: the running server" if live else None
    )
    columns = ["upstream", "kind", "status", "latency", "models found", "continuation"]
    for column in columns + (["circuit", "last outcome"] if live else []):
        table.add_column(column, justify="right" if column == "latency" else "left")
    down = False
    for name, probe in results.items():
        entry = live.get(name)
        open_circuit = entry is not None and entry["state"] != "closed"
        down = down or not probe.ok or open_circuit
        if not probe.ok:
            status = f"[red]down[/] {escape(probe.detail)}"
        elif open_circuit:
            status = "[red]down[/] (its circuit is open on the server)"
        else:
            status = "[green]ok[/]"
        found = ", ".join(probe.models[:6]) + (" ..." if len(probe.models) > 6 else "")
        row = [name, settings.upstreams[name].kind, status, f"{probe.latency_ms:.0f} ms", found]
        row.append(escape(continuations.get(name, "")))
        if live:
            row += [_circuit_cell(entry), _outcome_cell(entry)]
        table.add_row(*row)
    Console().print(table)
    if down or backends_down:
        raise SystemExit(1)


@click.command()
@config_option
@data_dir_option
@click.option("--url", default=None, help="Ask this running nobusy over HTTP instead.")
@click.option("--admin-key", default=None, help="Its admin key (default: the config's).")
def reload(
    config_file: Path | None, data_dir: Path | None, url: str | None, admin_key: str | None
) -> None:
    """Apply the config file and the managed overlay to the running server, streams kept.
    Checked here first (a config that does not load changes nothing), then SIGHUP to the
    process in data_dir/nobusy.pid; with --url, POST /v1/nobusy/reload, which says what changed."""
    import os
    import signal

    from nobusy.edge.server import PID_FILE

    settings = _settings(config_file, data_dir=data_dir)
    if url is not None:
        key = admin_key or (settings.admin_key.get_secret_value() if settings.admin_key else "")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        answer = httpx.post(url.rstrip("/") + "/v1/nobusy/reload", headers=headers, timeout=60)
        if answer.status_code != 200:
            message = answer.json().get("error", {}).get("message", answer.text)
            raise CliError(message, "the running configuration stays")
        result = answer.json()
        for what, names in result["upstreams"].items():
            if what != "kept" and names:
                click.echo(f"upstreams {what}: {', '.join(names)}")
        if result["aliases"]:
            click.echo(f"aliases changed: {', '.join(result['aliases'])}")
        for name in result["needs_restart"]:
            click.echo(f"needs restart: {name}")
        click.echo(f"reloaded in {result['seconds'] * 1000:.0f} ms")
        return
    pid_file = settings.data_dir / PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        raise CliError(
            f"no running nobusy found through {pid_file}",
            "--data-dir names the server's data dir; --url asks it over HTTP",
        ) from None
    click.echo(f"config checked; SIGHUP sent to nobusy (pid {pid}): its log says what changed")


def _check_backends(settings: Settings) -> bool:
    """Print the shared backends' table (when any is configured); True if one is down."""
    found: list[Health] = []
    for target in PROBES.values():
        module, _, name = target.partition(":")
        probe: Callable[[Settings], Health | None] = getattr(importlib.import_module(module), name)
        health = probe(settings)
        if health is not None:
            found.append(health)
    if not found:
        return False
    table = Table(title="Shared backends")
    for column in ("backend", "url", "status", "latency", "detail"):
        table.add_column(column, justify="right" if column == "latency" else "left")
    for health in found:
        status = "[green]ok[/]" if health.ok else "[red]down[/]"
        latency = "" if health.latency_ms is None else f"{health.latency_ms:.0f} ms"
        row = [health.backend, escape(health.url), status, latency, escape(health.detail)]
        table.add_row(*row)
    Console().print(table)
    return not all(health.ok for health in found)


def _live_circuits(
    settings: Settings, url: str | None, admin_key: str | None
) -> dict[str, dict[str, Any]]:
    """Circuit states from a nobusy already serving this config, if one answers."""
    explicit = url is not None
    if url is None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        url = f"http://{host}:{settings.port}"
    from nobusy.cli.chat import api_url

    headers = {}
    key = admin_key or (settings.admin_key.get_secret_value() if settings.admin_key else None)
    if key:
        headers["authorization"] = f"Bearer {key}"
    err = Console(stderr=True)
    try:
        response = httpx.get(f"{api_url(url)}/nobusy/upstreams", headers=headers, timeout=2)
        data = response.json()["data"] if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError):
        if explicit:
            err.print(f"[yellow]no nobusy answered at {escape(url)}: circuits not shown[/]")
        return {}
    if response.status_code in (401, 403):
        err.print(
            f"[yellow]the server at {escape(url)} wants its admin key: circuits not shown "
            "(--admin-key or NOBUSY_ADMIN_KEY)[/]"
        )
    return {entry["name"]: entry for entry in data}


def _circuit_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    state = entry["state"]
    colour = {"closed": "green", "open": "red"}.get(state, "yellow")
    detail = f" for {entry['retry_in']:.0f}s" if state == "open" else ""
    error = entry.get("last_error") if state != "closed" else None
    error = f" - {escape(error)}" if error else ""
    return f"[{colour}]{state}[/]{detail}{error}"


def _outcome_cell(entry: dict[str, Any] | None) -> str:
    """The last real answer or failure the server saw from this upstream, and how long ago."""
    if entry is None:
        return ""
    ok_at, error_at = entry.get("last_ok_at"), entry.get("last_error_at")
    if ok_at is None and error_at is None:
        return "[dim]no request yet[/]"
    now = time.time()
    if error_at is not None and (ok_at is None or error_at > ok_at):
        return f"[red]failed[/] {now - error_at:.0f}s ago: {escape(entry.get('last_error') or '')}"
    return f"[green]answered[/] {now - (ok_at or now):.0f}s ago"


async def _probe_all(settings: Settings) -> tuple[dict[str, Probe], dict[str, str]]:
    upstreams = {name: build_upstream(name, spec) for name, spec in settings.upstreams.items()}
    models = _route_models(settings)
    try:
        probes = await asyncio.gather(
            *(
                _probe(u, models.get(name, _default_or_skip(settings, name)))
                for name, u in upstreams.items()
            )
        )
        results = dict(zip(upstreams, probes, strict=True))
        # Which continuation each live upstream honours (a few short requests each).
        down = {name for name, probe in results.items() if not probe.ok}
        continuations = await check_continuations(upstreams, dict(settings.upstreams), down)
    finally:
        await asyncio.gather(*(u.aclose() for u in upstreams.values()))
    return results, continuations


_NO_ROUTE = object()  # no route names the upstream and it has no default model to ask


def _default_or_skip(settings: Settings, name: str) -> object:
    return None if settings.upstreams[name].has_default_model() else _NO_ROUTE


def _route_models(settings: Settings) -> dict[str, str | None]:
    """The model each upstream is first asked for by a route (None: its default model)."""
    out: dict[str, str | None] = {}
    for spec in settings.models.values():
        for route in (*spec.routes, *spec.overflow):
            out.setdefault(route.upstream, route.model)
    return out


async def _probe(upstream: Upstream, model: object = None) -> Probe:
    return await probe_answer(
        upstream, model if isinstance(model, str) else None, answer=model is not _NO_ROUTE
    )
