"""``nobusy crosscheck "问题" --models a,b,c``: ask a running nobusy to cross-check one question;
answers side by side with flagged spans highlighted, and a table of agreement and verdicts."""

from __future__ import annotations

import json
import os
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from nobusy.cli.chat import api_url
from nobusy.cli.errors import CliError

__all__ = ["crosscheck", "render"]

_COLOURS = {
    "brand_not_asked": "bold yellow",
    "call_to_action": "bold magenta",
    "contact_or_purchase_path": "bold white on red",
    "incentive": "bold cyan",
    "superlative": "bold red",
    "self_preferencing": "bold blue",
    "unsupported": "underline",
}
_VERDICTS = {"clean": "green", "suspect": "yellow", "promotional": "bold red"}


@click.command()
@click.argument("question")
@click.option("--models", "-m", required=True, help="2-5 aliases or UPSTREAM/MODEL, by commas.")
@click.option("--judge", default=None, help="An alias that judges the answers (one more call).")
@click.option(
    "--language",
    type=click.Choice(["zh", "en"]),
    default=None,
    help="Language of explanations (default: the question's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--url",
    default="http://127.0.0.1:8000/v1",
    show_default=True,
    help="Base URL of the nobusy service (/v1 is added when missing).",
)
@click.option("--api-key", default=None, help="API key (default: $NOBUSY_API_KEY).")
def crosscheck(
    question: str,
    models: str,
    judge: str | None,
    language: str | None,
    as_json: bool,
    url: str,
    api_key: str | None,
) -> None:
    """Ask several sources the same question and show where they agree and what is advertising."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": question}],
        "models": [m.strip() for m in models.split(",") if m.strip()],
    }
    if judge:
        body["judge"] = judge
    if language:
        body["language"] = language
    key = api_key or os.environ.get("NOBUSY_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    base = api_url(url)
    try:
        response = httpx.post(base + "/nobusy/crosscheck", json=body, headers=headers, timeout=600)
    except httpx.TransportError:
        raise CliError(
            f"cannot reach nobusy at {base}", "is `nobusy serve` running? --url names another"
        ) from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise CliError(
            f"the cross-check was refused ({response.status_code}): {message}",
            "see `nobusy crosscheck --help`",
        )
    report = response.json()
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    render(report, Console(highlight=False))


def highlighted(answer: str, flags: list[dict[str, Any]]) -> Text:
    """The answer with each flagged span styled by its type (word flags over sentence ones)."""
    text = Text(answer)
    for flag in sorted(flags, key=lambda f: f["type"] != "unsupported"):
        text.stylize(_COLOURS.get(flag["type"], "bold"), flag["start"], flag["end"])
    return text


def render(report: dict[str, Any], console: Console) -> None:
    """Answers side by side, then the summary table."""
    sources = report["sources"]
    grid = Table(show_lines=True, expand=True)
    for source in sources:
        grid.add_column(f"{source['label']}: {source['model']}", ratio=1)
    cells: list[Text] = []
    for source in sources:
        if source["status"] != "ok":
            cells.append(Text(f"failed: {source['error']['message']}", style="dim red"))
        else:
            cells.append(highlighted(source["answer"] or "", source.get("flags", [])))
    grid.add_row(*cells)
    console.print(grid)
    summary = Table(title=f"agreement {report.get('agreement')}  ({report.get('mode')})")
    for column in (
        "source",
        "upstream",
        "latency ms",
        "tokens",
        "verdict",
        "score",
        "decided by",
        "flags",
    ):
        summary.add_column(column)
    for source in sources:
        verdict = source.get("verdict", "failed")
        kinds = sorted({f["type"] for f in source.get("flags", [])})
        summary.add_row(
            f"{source['label']}: {source['model']}",
            str(source.get("upstream") or "-"),
            f"{source['latency_ms']:.0f}",
            str(source.get("usage", {}).get("total_tokens", "-")),
            Text(verdict, style=_VERDICTS.get(verdict, "dim")),
            str(source.get("score", "-")),
            str(source.get("decided_by", "-")),
            ", ".join(kinds) or "-",
        )
    console.print(summary)
    if report.get("note"):
        console.print(f"[dim]{report['note']}[/]")
    for source in sources:
        for flag in source.get("flags", []):
            console.print(f"[bold]{source['label']}[/] {flag['type']}: {flag['explanation']}")
