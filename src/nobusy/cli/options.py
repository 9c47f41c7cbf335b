"""Options every command shares: ``--config`` and ``--data-dir``, resolved as ``serve`` does;
and ``serve``'s flags, one per top-level setting, generated from the settings fields.

Every command that reads nobusy's files finds them where the server does: ``--data-dir``, else
``$NOBUSY_DATA_DIR``, else ``data_dir`` in the config file (``--config`` or
``$NOBUSY_CONFIG``), else ``./data``. None of them creates a database silently: a command
that finds none says where it looked and how to point elsewhere (``keys create`` makes one,
and says so).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
from click.core import ParameterSource
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from nobusy.cli.errors import CliError
from nobusy.errors import ConfigError
from nobusy.settings import SCALARS, Settings, env_name, load_settings
from nobusy.store.migrations import DB_NAME

__all__ = [
    "config_option",
    "data_dir_option",
    "existing_store",
    "given",
    "setting_flags",
    "store_options",
    "where",
]

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
    help=f"nobusy's data dir (default: ${env_name('data_dir')}, else data_dir in the config, "
    "else ./data).",
)


def setting_flags(function: F) -> F:
    """A flag for every top-level setting one value sets: ``data_dir`` is ``--data-dir``, its
    help the field's description, its default the field's. Secrets have none: a command line
    is readable by every user of the machine (``ps``), so they come from the environment or
    the file. ``given`` tells which flags were typed."""
    for name in reversed(SCALARS):  # decorators apply bottom up: keep the fields' order
        field = Settings.model_fields[name]
        if not _is_secret(field.annotation):
            function = _flag(name, field)(function)
    return function


def given(ctx: click.Context, flags: dict[str, Any]) -> dict[str, Any]:
    """The flags typed on the command line: a default shown in the help must not override the
    file or the environment, which ``load_settings`` reads beneath the flags."""
    return {
        name: value
        for name, value in flags.items()
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


def _flag(name: str, field: FieldInfo) -> Callable[[F], F]:
    annotation, flag = field.annotation, "--" + name.replace("_", "-")
    present = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(present) == 1:  # `str | None`
        annotation = present[0]
    shown: dict[str, Any] = {"help": field.description, "default": field.default}
    if annotation is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, **shown)
    if get_origin(annotation) is tuple:  # a list: comma-separated, as in NOBUSY_* variables
        return click.option(flag, name, metavar="A,B", help=field.description)
    kind: click.ParamType[Any]
    if get_origin(annotation) is Literal:
        kind = click.Choice(get_args(annotation))
    elif annotation is int or annotation is float:
        kind = _number(annotation, field)
    elif annotation is Path:
        kind = click.Path(path_type=Path, file_okay=not name.endswith("_dir"))
    elif annotation is str:
        kind = click.STRING
    else:
        raise TypeError(f"no flag type for the setting {name}: {annotation}")
    return click.option(flag, name, type=kind, show_default=True, **shown)


def _number(annotation: Any, field: FieldInfo) -> click.ParamType[Any]:
    """INTEGER or FLOAT, bounded as the field is (``0<=x<=65535`` shows in the help)."""
    bounds = {
        key: getattr(rule, key)
        for rule in field.metadata
        for key in ("ge", "gt", "le", "lt")
        if hasattr(rule, key)
    }
    if not bounds:
        return click.INT if annotation is int else click.FLOAT
    if annotation is int:  # whole numbers read better closed: x>=1 rather than x>0
        low = bounds["gt"] + 1 if "gt" in bounds else bounds.get("ge")
        high = bounds["lt"] - 1 if "lt" in bounds else bounds.get("le")
        return click.IntRange(low, high)
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    return click.FloatRange(low, high, min_open="gt" in bounds, max_open="lt" in bounds)


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
    if flag is not None:
        return "--data-dir"
    if env_name("data_dir") in os.environ:
        return f"${env_name('data_dir')}"
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
    if settings.store is None and not path.is_file():  # PostgreSQL: no file to find
        raise CliError(
            f"no {file} in {settings.data_dir.resolve()} "
            f"(the data dir from {where(settings, config_file, data_dir)})",
            "point at the server's data with --config FILE, --data-dir DIR or NOBUSY_DATA_DIR",
        )
    return settings, settings.data_dir
