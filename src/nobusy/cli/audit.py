"""``nobusy audit verify`` and ``nobusy audit export``: check and take out the audit log."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nobusy.cli.options import existing_store, settings_for, store_options
from nobusy.crypto import CryptoError, SuiteName, load_suite, signature_algorithm
from nobusy.errors import ConfigError
from nobusy.settings import Settings
from nobusy.store.audit import AuditError, AuditLog, verify_export
from nobusy.store.backends import open_audit

__all__ = ["audit", "parse_since"]

F = TypeVar("F", bound=Callable[..., Any])
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _common(fn: F) -> F:
    fn = click.option(
        "--crypto",
        type=click.Choice(["gm", "standard"]),
        default=None,
        help="Crypto suite the log was written with (default: the config's, $NOBUSY_CRYPTO).",
    )(fn)
    return store_options(fn)


def _where(
    config_file: Path | None, data_dir: Path | None, crypto: SuiteName | None, need: bool = True
) -> tuple[Settings, SuiteName]:
    """The server's settings (its data dir must hold audit.db when ``need``, unless the log
    is in PostgreSQL) and crypto suite."""
    if need:
        settings, _ = existing_store(config_file, data_dir, "audit.db")
    else:
        settings = settings_for(config_file, data_dir=data_dir)
    return settings, crypto or settings.crypto


def _open(settings: Settings, crypto: SuiteName) -> AuditLog:
    try:
        suite = load_suite(crypto, settings.data_dir, os.environ, create_key=False)
        return open_audit(settings, suite)
    except (CryptoError, AuditError, ConfigError) as e:
        raise click.ClickException(str(e)) from None


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` ago, or an ISO date/time (local time unless it has
    an offset)."""
    now = now or datetime.now(UTC)
    m = re.fullmatch(r"(\d+)\s*([mhdw])", text.strip())
    if m:
        return now - timedelta(**{_UNITS[m[2]]: int(m[1])})
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use 7d, 12h, 30m, 2w or a date like 2026-11-01", param_hint="--since"
        ) from None


@click.group("audit")
def audit() -> None:
    """The tamper-evident audit log: verify its hash chain, export it (signed)."""


@audit.command()
@_common
@click.option("--export", "export_file", type=click.Path(exists=True, path_type=Path),
              help="Verify this signed export instead of the database.")  # fmt: skip
@click.option("--signature", type=click.Path(exists=True, path_type=Path),
              help="The export's signature (default: EXPORT.sig).")  # fmt: skip
@click.option("--public-key", type=click.Path(exists=True, path_type=Path),
              help="The signer's public key PEM (default: the one in the data dir).")  # fmt: skip
def verify(
    config_file: Path | None,
    data_dir: Path | None,
    crypto: SuiteName | None,
    export_file: Path | None,
    signature: Path | None,
    public_key: Path | None,
) -> None:
    """Check the hash chain of audit.db (or a signed export); exit 1 at the first bad row."""
    settings, crypto = _where(config_file, data_dir, crypto, need=export_file is None)
    data_dir = settings.data_dir
    console = Console()
    table = Table(show_header=False)
    if export_file is None:
        if signature or public_key:
            raise click.UsageError("--signature and --public-key need --export")
        with _open(settings, crypto) as log:
            result = log.verify()
        table.title = f"audit log {log.where} ({crypto})"
        rows = [
            ("rows checked", f"{result.rows_checked:,}"),
            ("pruned through row", str(result.pruned_through or "-")),
            ("last row", str(result.last_row_id or "-")),
            ("first bad row", str(result.first_bad_row_id or "-")),
            ("reason", result.reason),
        ]
        ok = result.ok
    else:
        signature = signature or export_file.with_name(export_file.name + ".sig")
        public_key = public_key or _default_public_key(data_dir, crypto)
        try:
            algorithm = signature_algorithm(public_key.read_bytes())
            ok = verify_export(export_file, signature, public_key)
        except (CryptoError, OSError) as e:
            raise click.ClickException(str(e)) from None
        table.title = f"signed export {export_file}"
        rows = [
            ("signature", f"{signature} ({algorithm})"),
            ("public key", str(public_key)),
            ("reason", "signature matches" if ok else "signature does not match the file"),
        ]
    for name, value in rows:
        table.add_row(name, escape(value))
    table.add_row("status", "[green]intact[/]" if ok else "[bold red]TAMPERED[/]")
    console.print(table)
    if not ok:
        sys.exit(1)


def _default_public_key(data_dir: Path, crypto: SuiteName) -> Path:
    path = data_dir / ("signing-sm2.pub" if crypto == "gm" else "signing-ed25519.pub")
    if not path.exists():
        raise click.UsageError(f"no {path}: give --public-key")
    return path


@audit.command()
@_common
@click.option("--since", required=True, help="7d, 12h, 30m, 2w, or a date like 2026-11-01.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON-lines file to write (default: standard output).")  # fmt: skip
@click.option("--sign", is_flag=True, help="Also write OUT.sig, signed with the data dir's key.")
@click.option("--decrypt", is_flag=True, help="Decrypt stored content (default: base64 tokens).")
def export(
    config_file: Path | None,
    data_dir: Path | None,
    crypto: SuiteName | None,
    since: str,
    out: Path | None,
    sign: bool,
    decrypt: bool,
) -> None:
    """Write audit rows from --since on as JSON lines, optionally with a signature file."""
    start = parse_since(since)
    settings, crypto = _where(config_file, data_dir, crypto)
    if sign and out is None:
        raise click.UsageError("--sign needs --out: the signature covers the file's bytes")
    with _open(settings, crypto) as log:
        try:
            if out is None:
                for record in log.export(start, decrypt):
                    sys.stdout.buffer.write(orjson.dumps(record, option=orjson.OPT_SORT_KEYS))
                    sys.stdout.buffer.write(b"\n")
                return
            n = log.write_export(out, start, decrypt=decrypt, sign=sign)
        except CryptoError as e:
            raise click.ClickException(str(e)) from None
        err = Console(stderr=True)
        err.print(f"{n:,} rows written to {escape(str(out))}")
        if sign:
            err.print(
                f"signature ({log.suite.signature_name}): {escape(str(out))}.sig; "
                f"public key: {escape(str(log.suite.public_key_path))}"
            )
