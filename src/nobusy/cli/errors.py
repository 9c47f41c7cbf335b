"""No traceback from any command: every error leaves as one line and a hint, exit code 1.

``NobusyGroup`` is the ``nobusy`` group's class; its ``invoke`` wraps every command, so the
translation lives here once rather than in a ``try`` per command. ``NOBUSY_DEBUG=1`` lets the
original exception through, traceback and all, for a bug report.
"""

from __future__ import annotations

import os
import sqlite3
from typing import IO, Any

import click

from nobusy.errors import ConfigError, NobusyError, StorageUnavailable

__all__ = ["CliError", "NobusyGroup", "describe"]


class CliError(click.ClickException):
    """A one-line error and, on the next line, what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        super().show(file)
        if self.hint:
            click.echo(f"hint: {self.hint}", err=True)


def describe(exc: BaseException) -> tuple[str, str]:
    """One line saying what went wrong, and a hint, for any exception a command may meet."""
    import openai
    import pydantic
    import yaml

    if isinstance(exc, ConfigError):
        return f"config error: {exc.message}", "see docs/configuration.md; `nobusy models` checks"
    if isinstance(exc, StorageUnavailable):
        return exc.message, "another process may hold the database; --data-dir picks another"
    if isinstance(exc, NobusyError):
        return exc.message, ""
    if isinstance(exc, openai.APIConnectionError):
        return (
            f"cannot reach the service at {exc.request.url}",
            "is `nobusy serve` running there? --url names another address",
        )
    if isinstance(exc, openai.AuthenticationError):
        return (
            f"the service refused the API key: {_api_message(exc)}",
            "pass --api-key nb-... or set NOBUSY_API_KEY",
        )
    if isinstance(exc, openai.NotFoundError):
        return (
            f"not found: {exc.request.url}",
            "--url is the service's base URL, such as http://127.0.0.1:8000/v1",
        )
    if isinstance(exc, openai.APIStatusError):
        return f"the service answered {exc.status_code}: {_api_message(exc)}", ""
    if isinstance(exc, openai.APIError):
        return f"the service failed: {exc.message}", ""
    import httpx

    if isinstance(exc, httpx.HTTPError):
        return f"HTTP error: {exc}", "check the URL and that the service is running"
    if isinstance(exc, sqlite3.Error):
        return (
            f"database error: {exc}",
            "check --data-dir (or data_dir in --config): it must be nobusy's own data dir",
        )
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", ""
    if isinstance(exc, yaml.YAMLError):
        return f"invalid YAML: {exc}", "see docs/configuration.md"
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        return f"invalid value: {where}: {first['msg']}", "see docs/configuration.md"
    return (
        f"unexpected error: {type(exc).__name__}: {exc}",
        "run again with NOBUSY_DEBUG=1 for the traceback, and report it",
    )


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", exc))


class NobusyGroup(click.Group):
    """A click group that turns any exception from its commands into a ``CliError``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            if os.environ.get("NOBUSY_DEBUG"):
                raise
            message, hint = describe(exc)
            raise CliError(message, hint) from None
