"""``nobusy secret encrypt``: an upstream API key, encrypted for the config file."""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import click

from nobusy.cli.options import store_options
from nobusy.crypto import CryptoError, load_suite
from nobusy.settings import CONFIG_AAD, ENCRYPTED_PREFIX

__all__ = ["secret"]


@click.group()
def secret() -> None:
    """Secrets for the config file, encrypted with the data key."""


@secret.command()
@store_options
@click.option(
    "--crypto",
    type=click.Choice(["gm", "standard"]),
    default=None,
    help="gm: SM4-GCM; standard: AES-256-GCM (default: the config's crypto, else gm).",
)
def encrypt(config_file: Path | None, data_dir: Path | None, crypto: str | None) -> None:
    """Read a secret from standard input; print it as an enc: value for the YAML config."""
    # The server's data dir and suite: a value encrypted with another data key never decrypts.
    # The config itself is read without its enc: values, which need this very key.
    data_dir, crypto = _where(config_file, data_dir, crypto)
    if sys.stdin.isatty():
        value = click.prompt("Secret", hide_input=True)
    else:
        value = sys.stdin.read().strip()
    if not value:
        raise click.UsageError("nothing to encrypt: give the secret on standard input")
    if not os.environ.get("NOBUSY_SECRET_KEY") and not (data_dir / "secret.key").exists():
        click.echo(
            f"Creating a new data key {(data_dir / 'secret.key').resolve()}: the server must "
            "run with this data dir to decrypt the value.",
            err=True,
        )
    try:
        suite = load_suite(crypto, data_dir, os.environ)  # type: ignore[arg-type]
    except CryptoError as exc:
        raise click.ClickException(str(exc)) from None
    token = suite.encrypt(value.encode("utf-8"), CONFIG_AAD)
    click.echo(ENCRYPTED_PREFIX + base64.b64encode(token).decode("ascii"))


def _where(config_file: Path | None, data_dir: Path | None, crypto: str | None) -> tuple[Path, str]:
    """``data_dir`` and ``crypto`` as the server resolves them, without decrypting the
    config's ``enc:`` values (they need the very key this command uses)."""
    from nobusy.cli.errors import CliError
    from nobusy.errors import ConfigError
    from nobusy.settings import read_config_file

    source = config_file or os.environ.get("NOBUSY_CONFIG")
    try:
        raw = read_config_file(Path(source), os.environ) if source else {}
    except ConfigError as exc:
        raise CliError(f"config error: {exc.message}", "see docs/configuration.md") from None
    directory = data_dir or Path(os.environ.get("NOBUSY_DATA_DIR") or raw.get("data_dir") or "data")
    suite = crypto or os.environ.get("NOBUSY_CRYPTO") or str(raw.get("crypto") or "gm")
    return directory, suite
