"""``nobusy secret encrypt``: an upstream API key, encrypted for the config file."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import click

from nobusy.crypto import CryptoError, load_suite
from nobusy.settings import CONFIG_AAD, ENCRYPTED_PREFIX

__all__ = ["secret"]


@click.group()
def secret() -> None:
    """Secrets for the config file, encrypted with the data key."""


@secret.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("NOBUSY_DATA_DIR", "data"),
    help="Where the data key lives (default $NOBUSY_DATA_DIR or ./data).",
)
@click.option(
    "--crypto",
    type=click.Choice(["gm", "standard"]),
    default=lambda: os.environ.get("NOBUSY_CRYPTO", "gm"),
    help="gm: SM4-GCM (default); standard: AES-256-GCM.",
)
def encrypt(data_dir: Path, crypto: str) -> None:
    """Read a secret from standard input; print it as an enc: value for the YAML config."""
    if sys.stdin.isatty():
        value = click.prompt("Secret", hide_input=True)
    else:
        value = sys.stdin.read().strip()
    if not value:
        raise click.UsageError("nothing to encrypt: give the secret on standard input")
    try:
        suite = load_suite(crypto, data_dir, os.environ)  # type: ignore[arg-type]
    except CryptoError as exc:
        raise click.ClickException(str(exc)) from None
    token = suite.encrypt(value.encode("utf-8"), CONFIG_AAD)
    click.echo(ENCRYPTED_PREFIX + base64.b64encode(token).decode("ascii"))
