"""Options every command shares: ``--config`` and ``--data-dir``, resolved as ``serve`` does.

Every command that reads nobusy's files finds them where the server does: ``--data-dir``, else
``$NOBUSY_DATA_DIR``, else ``data_dir`` in the config file (``--config`` or
``$NOBUSY_CONFIG``), else ``./data``. None of them creates a database silently: a command
that finds none says where it looked and how to point elsewhere (``keys create`` makes one,
and says so).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from nobusy.cli.errors import CliError
from nobusy.errors import ConfigError
from nobusy.settings import Settings, load_settings
from nobusy.store.migrations import DB_NAME

__all__ = ["config_option", "data_dir_option", "existing_store", "store_options", "where"]

F = TypeVar("F", bound=Callable[..., Any])

config_option = click.option(
    "--config",
    "-c",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config file (default: $NOBUSY_CONFIG, else the embedded model alone).",
)

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="nobusy's data dir (default: $NOBUSY_DATA_DIR, else data_dir in the config, else ./data).",
)


def store_options(function: F) -> F:
    """``--config`` and ``--data-dir``, for commands that read the data dir."""
    return config_option(data_dir_option(function))


def settings_for(config_file: Path | None, **overrides: Any) -> Settings:
    """The settings as ``serve`` would build them; a bad config is a one-line error."""
    try:
        return load_settings(config_file, **overrides)
    except ConfigError as exc:
        raise CliError(
            f"config error: {exc.message}", "see docs/configuration.md; --config picks the file"
        ) from None


def where(settings: Settings, config_file: Path | None, flag: Path | None) -> str:
    """Where the data dir came from, in words, for messages."""
    import os

    if flag is not None:
        return "--data-dir"
    if "NOBUSY_DATA_DIR" in os.environ:
        return "$NOBUSY_DATA_DIR"
    source = config_file or os.environ.get("NOBUSY_CONFIG")
    if source:
        return f"the config {source}"
    return "the default ./data of the current folder"


def existing_store(
    config_file: Path | None, data_dir: Path | None, file: str = DB_NAME
) -> tuple[Settings, Path]:
    """The settings and data dir, once ``data_dir/file`` is known to exist."""
    settings = settings_for(config_file, data_dir=data_dir)
    path = settings.data_dir / file
    if not path.is_file():
        raise CliError(
            f"no {file} in {settings.data_dir.resolve()} "
            f"(the data dir from {where(settings, config_file, data_dir)})",
            "point at the server's data with --config FILE, --data-dir DIR or NOBUSY_DATA_DIR",
        )
    return settings, settings.data_dir
