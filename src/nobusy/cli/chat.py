"""``nobusy chat``: a terminal chat against a running nobusy, streaming, reasoning dimmed."""

from __future__ import annotations

import os
from typing import Any

import click
import httpx
from rich.console import Console

__all__ = ["api_url", "chat"]


@click.command()
@click.option("--model", "-m", default=None, help="Model alias (default: the first one served).")
@click.option(
    "--url",
    default="http://127.0.0.1:8000/v1",
    show_default=True,
    help="Base URL of the nobusy service (/v1 is added when missing).",
)
@click.option("--api-key", default=None, help="API key (default: $NOBUSY_API_KEY).")
@click.option("--system", default=None, help="A system prompt for the conversation.")
def chat(model: str | None, url: str, api_key: str | None, system: str | None) -> None:
    """Chat in the terminal; /reset starts over, /exit or Ctrl-D leaves."""
    import openai

    from nobusy.cli.errors import CliError

    console = Console(highlight=False)
    url = api_url(url)
    api_key = api_key or os.environ.get("NOBUSY_API_KEY")
    # The SDK insists on a key; with none given, send no Authorization at all rather than a
    # made-up one the server would call malformed.
    hooks = {} if api_key else {"request": [_drop_authorization]}
    client = openai.OpenAI(
        base_url=url,
        api_key=api_key or "-",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(event_hooks=hooks),
    )
    try:
        found = client.models.list().data
    except openai.APIConnectionError:
        raise CliError(
            f"cannot reach nobusy at {url}", "is `nobusy serve` running? --url names another"
        ) from None
    except openai.AuthenticationError as exc:
        hint = "pass --api-key nb-... or set NOBUSY_API_KEY"
        if not api_key:
            raise CliError(f"the service at {url} needs an API key", hint) from None
        raise CliError(f"the service at {url} refused the API key: {exc.message}", hint) from None
    except openai.NotFoundError:
        raise CliError(
            f"no OpenAI-compatible API at {url}",
            "--url is nobusy's address, such as http://127.0.0.1:8000",
        ) from None
    if not found:
        raise CliError("the service has no models", "check its config with `nobusy models`")
    model = model or found[0].id
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    console.print(f"[bold]nobusy chat[/] with [cyan]{model}[/] at {url}  (/reset, /exit)")
    while True:
        try:
            text = console.input("[bold green]you>[/] ").strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history = history[:1] if system else []
            console.print("[dim](conversation cleared)[/]")
            continue
        history.append({"role": "user", "content": text})
        answer = _stream_answer(client, model, history, console)
        if answer is None:
            history.pop()
        else:
            history.append({"role": "assistant", "content": answer})


def _drop_authorization(request: Any) -> None:
    request.headers.pop("authorization", None)


def api_url(url: str) -> str:
    """``url`` with ``/v1`` at the end of its path, as the OpenAI SDK needs it."""
    parsed = httpx.URL(url if "://" in url else f"http://{url}")
    path = parsed.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    return str(parsed.copy_with(path=path))


def _stream_answer(
    client: Any, model: str, history: list[dict[str, Any]], console: Console
) -> str | None:
    import openai

    parts: list[str] = []
    reasoning = False
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=history, stream=True
        )
        upstream = raw.headers.get("x-nobusy-upstream", "?")
        for chunk in raw.parse():
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            thought = getattr(delta, "reasoning_content", None)
            if thought:
                if not reasoning:
                    console.print("[dim italic]thinking: [/]", end="")
                    reasoning = True
                console.print(thought, style="dim", end="", markup=False)
            if delta.content:
                if reasoning:
                    console.print()
                    reasoning = False
                parts.append(delta.content)
                console.out(delta.content, end="", highlight=False)
        console.print(f"\n[dim]({upstream})[/]")
    except openai.APIError as exc:
        console.print(f"\n[red]error:[/] {exc.message}")
        return None
    except KeyboardInterrupt:
        console.print("\n[dim](stopped)[/]")
    return "".join(parts)
