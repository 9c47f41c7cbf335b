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
from nobusy.cli.options import config_option, given, setting_flags, settings_for
from nobusy.errors import ConfigError, UpstreamError
from nobusy.routing.continuation_probe import check_continuations
from nobusy.settings import Settings
from nobusy.store.health import Health
from nobusy.upstreams import build_upstream
from nobusy.upstreams.base import Probe, Upstream, UpstreamCall, has_token

__all__ = ["PROBES", "check", "models", "serve"]

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
    settings = _settings(config_file, **given(ctx, flags))
    from nobusy.edge.server import run

    # The start-up lines (addresses, console) are logged by `run` once the settings and the
    # address have passed every check: nothing says "serving" before a refusal.
    try:
        run(settings, config_file)
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
    """``/models`` (or loading the model), then a real one-token answer: listing models
    proves little about answering them (a key without credit lists them fine)."""
    probe = await upstream.probe()
    if not probe.ok or model is _NO_ROUTE:
        return probe
    body = {"messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1}
    call = UpstreamCall(model=model if isinstance(model, str) else None, body=body)
    timeout = upstream.settings.first_token_timeout
    start = time.perf_counter()
    chunks = aiter(upstream.stream(call))
    try:
        async with asyncio.timeout(timeout):
            async for chunk in chunks:
                if has_token(chunk):
                    break
    except UpstreamError as exc:
        probe.ok, probe.detail = False, f"answer: {exc.message}"
    except TimeoutError:
        probe.ok, probe.detail = False, f"answer: no first token within {timeout:g}s"
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    probe.latency_ms = (time.perf_counter() - start) * 1000
    return probe
