"""``nobusy serve``, ``nobusy models`` and ``nobusy check``: run and inspect a configuration."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nobusy.continuation_probe import check_continuations
from nobusy.errors import ConfigError
from nobusy.settings import Settings, load_settings
from nobusy.upstreams import build_upstream
from nobusy.upstreams.base import Probe

__all__ = ["check", "models", "serve"]

config_option = click.option(
    "--config",
    "-c",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config file (default: $NOBUSY_CONFIG, else the embedded model alone).",
)


def _settings(config_file: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config_file, **overrides)
    except ConfigError as exc:
        raise click.ClickException(f"config error: {exc.message}") from None


@click.command()
@config_option
@click.option("--host", help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option("--workers", type=click.IntRange(min=1), help="Server processes (default 1).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where nobusy writes its files (default ./data).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log level (default info).",
)
@click.option(
    "--insecure", is_flag=True, default=None, help="Allow a non-loopback address without API keys."
)
def serve(config_file: Path | None, **flags: Any) -> None:
    """Run the OpenAI-compatible service."""
    settings = _settings(config_file, **flags)
    from nobusy.server import run

    console = Console(stderr=True)
    console.print(
        f"[bold]nobusy[/] serving {', '.join(settings.models)} at "
        f"[cyan]http://{settings.host}:{settings.port}/v1[/]"
    )
    try:
        run(settings, config_file)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from None


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
def check(config_file: Path | None) -> None:
    """Validate the config and probe every upstream; exit 1 if any is down."""
    settings = _settings(config_file)
    results, continuations = asyncio.run(_probe_all(settings))
    live = _live_circuits(settings)
    table = Table(title="Upstreams")
    columns = ["upstream", "kind", "status", "latency", "models found", "continuation"]
    for column in columns + (["circuit (running server)"] if live else []):
        table.add_column(column, justify="right" if column == "latency" else "left")
    for name, probe in results.items():
        status = "[green]ok[/]" if probe.ok else f"[red]down[/] {probe.detail}"
        found = ", ".join(probe.models[:6]) + (" ..." if len(probe.models) > 6 else "")
        row = [name, settings.upstreams[name].kind, status, f"{probe.latency_ms:.0f} ms", found]
        row.append(escape(continuations.get(name, "")))
        if live:
            row.append(_circuit_cell(live.get(name)))
        table.add_row(*row)
    Console().print(table)
    if not all(p.ok for p in results.values()):
        raise SystemExit(1)


def _live_circuits(settings: Settings) -> dict[str, dict[str, Any]]:
    """Circuit states from a nobusy already serving this config, if one answers."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    headers = {}
    if settings.admin_key is not None:
        headers["authorization"] = f"Bearer {settings.admin_key.get_secret_value()}"
    try:
        response = httpx.get(
            f"http://{host}:{settings.port}/v1/nobusy/upstreams", headers=headers, timeout=1
        )
        data = response.json()["data"] if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError):
        return {}
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


async def _probe_all(settings: Settings) -> tuple[dict[str, Probe], dict[str, str]]:
    upstreams = {name: build_upstream(name, spec) for name, spec in settings.upstreams.items()}
    try:
        probes = dict(
            zip(
                upstreams,
                await asyncio.gather(*(u.probe() for u in upstreams.values())),
                strict=True,
            )
        )
        # Which continuation each live upstream honours (a few short requests each).
        down = {name for name, probe in probes.items() if not probe.ok}
        continuations = await check_continuations(upstreams, dict(settings.upstreams), down)
    finally:
        await asyncio.gather(*(u.aclose() for u in upstreams.values()))
    return probes, continuations
