"""``nobusy pool``: the local inference servers a running nobusy places requests on; drain one."""

from __future__ import annotations

from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table

from nobusy.cli.errors import CliError

__all__ = ["pool"]

_url_option = click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    envvar="NOBUSY_URL",
    help="Address of the running nobusy.",
)
_key_option = click.option(
    "--admin-key", default=None, envvar="NOBUSY_ADMIN_KEY", help="Admin key, if one is set."
)


def _call(method: str, url: str, path: str, admin_key: str | None) -> Any:
    base = url if "://" in url else f"http://{url}"
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}
    try:
        response = httpx.request(
            method, base.rstrip("/") + "/v1/nobusy" + path, headers=headers, timeout=10
        )
    except httpx.HTTPError:
        raise CliError(
            f"cannot reach nobusy at {base}", "is `nobusy serve` running? --url names another"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        hint = "--admin-key (or NOBUSY_ADMIN_KEY)" if response.status_code == 401 else ""
        raise CliError(message or f"HTTP {response.status_code} from {base}", hint)
    return body


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@click.group("pool", invoke_without_command=True)
@_url_option
@_key_option
@click.pass_context
def pool(ctx: click.Context, url: str, admin_key: str | None) -> None:
    """Show the local inference servers (model, running/waiting, KV use, cache hits, load) and
    the tiers (utilisation, spilled share, what the spill cost)."""
    ctx.obj = (url, admin_key)
    if ctx.invoked_subcommand is not None:
        return
    body = _call("GET", url, "/pool", admin_key)
    rows, tiers = body["data"], body.get("tiers", [])
    console = Console()
    if not rows:
        console.print("no server-aware upstreams (kind vllm, sglang or llamacpp) are configured")
    else:
        _servers(console, rows)
    if len(tiers) > 1 and (rows or body.get("spill")):
        _tiers(console, tiers)


def _tiers(console: Console, tiers: list[dict[str, Any]]) -> None:
    table = Table("tier", "upstreams", "util.", "answers", "share", "spilled", "spill cost")
    for tier in tiers:
        table.add_row(
            str(tier["tier"]),
            ", ".join(tier["upstreams"]),
            _share(tier["utilisation"]),
            str(tier["answered"]),
            _share(tier["share"]),
            _share(tier["spilled_share"]),
            f"{tier['spill_cost']:.4f} {tier['currency']}",
        )
    console.print(table)


def _servers(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("server", "kind", "model", "running", "waiting", "KV", "cache hits", "util.")
    table.add_column("signals")
    for row in rows:
        name = row["name"] + (" [yellow](drained)[/]" if row["drained"] else "")
        hits = row["server_hit_rate"]
        hits = hits if hits is not None else row["cache_hit_estimate"]
        signals = row["signals"] if not row["problem"] else f"[red]{row['problem']}[/]"
        table.add_row(
            name,
            row["kind"],
            row["model"] or "-",
            _count(row["running"]) if row["running"] is not None else f"({row['in_flight']})",
            _count(row["waiting"]),
            _share(row["kv_usage"]),
            _share(hits),
            _share(row["utilisation"]),
            signals,
        )
    console.print(table)


@pool.command("drain")
@click.argument("name")
@click.pass_obj
def drain(obj: tuple[str, str | None], name: str) -> None:
    """Send no new request to server NAME; the streams it is answering finish."""
    _call("POST", obj[0], f"/pool/{name}/drain", obj[1])
    click.echo(f"{name}: drained (no new requests; running streams finish)")


@pool.command("undrain")
@click.argument("name")
@click.pass_obj
def undrain(obj: tuple[str, str | None], name: str) -> None:
    """Send new requests to server NAME again."""
    _call("POST", obj[0], f"/pool/{name}/undrain", obj[1])
    click.echo(f"{name}: back in the pool")
