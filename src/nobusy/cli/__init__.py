"""The ``nobusy`` command: one click group, its commands in modules by topic."""

from __future__ import annotations

import logging

import click

from nobusy import __version__
from nobusy.cli.audit import audit
from nobusy.cli.chat import chat
from nobusy.cli.crosscheck import crosscheck
from nobusy.cli.errors import NobusyGroup
from nobusy.cli.kb import kb
from nobusy.cli.key_groups import groups
from nobusy.cli.keys import keys
from nobusy.cli.pool import pool
from nobusy.cli.secret import secret
from nobusy.cli.serve import check, models, reload, serve
from nobusy.cli.usage import usage
from nobusy.testing.fake_upstream import fake_upstream_command

__all__ = ["cli", "main"]


@click.group(
    cls=NobusyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="nobusy")
def cli() -> None:
    """nobusy: one OpenAI-compatible endpoint over many model sources, never "server busy"."""
    # Commands say what happened themselves; the library's log lines are for the server's log
    # (configured by `serve`), not Python's bare last-resort printing to the terminal.
    logging.getLogger("nobusy").addHandler(logging.NullHandler())


cli.add_command(serve)
cli.add_command(models)
cli.add_command(check)
cli.add_command(reload)
cli.add_command(chat)
cli.add_command(crosscheck)
cli.add_command(keys)
keys.add_command(groups)
cli.add_command(kb)
cli.add_command(audit)
cli.add_command(secret)
cli.add_command(usage)
cli.add_command(pool)
cli.add_command(fake_upstream_command)


def main() -> None:
    cli()
