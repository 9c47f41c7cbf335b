"""``nobusy kb``: the knowledge base from the terminal — add documents, list stores, search.

It talks to the running server over HTTP, through the same Files and Vector Stores API (and
the official ``openai`` SDK) any client uses, with an API key or the admin key. Not to the
data directory directly: the server's workers own ingestion and its index keeps each store's
vectors in memory, so a second writer beside it would leave the server searching stale
vectors; over HTTP, access follows the key, as it does for every other client.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from nobusy.cli.chat import api_url
from nobusy.cli.errors import CliError

__all__ = ["kb"]

STATUS_STYLE = {"completed": "green", "failed": "red", "in_progress": "yellow", "cancelled": "dim"}
POLL_SECONDS = 0.25

url_option = click.option(
    "--url",
    default="http://127.0.0.1:8000/v1",
    show_default=True,
    help="Base URL of the nobusy service (/v1 is added when missing).",
)
key_option = click.option(
    "--api-key", default=None, help="API key or the admin key (default: $NOBUSY_API_KEY)."
)


@click.group()
def kb() -> None:
    """The knowledge base of a running nobusy: add documents, list stores, search."""


def _client(url: str, api_key: str | None) -> Any:
    import openai

    url = api_url(url)
    api_key = api_key or os.environ.get("NOBUSY_API_KEY")
    hooks = {} if api_key else {"request": [_drop_authorization]}
    return openai.OpenAI(
        base_url=url,
        api_key=api_key or "-",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(event_hooks=hooks),
    )


def _drop_authorization(request: Any) -> None:
    request.headers.pop("authorization", None)


@contextlib.contextmanager
def _calling(client: Any) -> Iterator[None]:
    """The SDK's errors as one line and a hint."""
    import openai

    try:
        yield
    except openai.APIConnectionError:
        raise CliError(
            f"cannot reach nobusy at {client.base_url}",
            "is `nobusy serve` running? --url names another",
        ) from None
    except openai.AuthenticationError as exc:
        raise CliError(
            f"the service refused the key: {exc.message}",
            "pass --api-key nb-... (or the admin key) or set NOBUSY_API_KEY",
        ) from None
    except openai.APIStatusError as exc:
        raise CliError(f"the service said {exc.status_code}: {exc.message}") from None


def _find_store(client: Any, store: str, *, create: bool = False) -> Any:
    """A store by id (``vs_…``) or by name (the newest of that name); created when asked."""
    if store.startswith("vs_"):
        return client.vector_stores.retrieve(store)
    for found in client.vector_stores.list(limit=100):
        if found.name == store:
            return found
    if create:
        return client.vector_stores.create(name=store)
    raise CliError(f"no vector store named {store!r}", "`nobusy kb list` shows the stores")


@kb.command("list")
@url_option
@key_option
def list_stores(url: str, api_key: str | None) -> None:
    """List the vector stores the key can see, with their files' status."""
    client = _client(url, api_key)
    with _calling(client):
        stores = list(client.vector_stores.list(limit=100))
    table = Table(title="Vector stores")
    for column in ("id", "name", "status", "files", "done", "failed", "bytes", "model"):
        table.add_column(column, no_wrap=column == "id")
    for store in stores:
        counts = store.file_counts
        extra = getattr(store, "nobusy", None) or {}
        table.add_row(
            store.id,
            escape(store.name or ""),
            _status(store.status),
            str(counts.total),
            str(counts.completed),
            str(counts.failed),
            f"{store.usage_bytes:,}",
            escape(str(extra.get("embedding_model", ""))),
        )
    Console().print(table)


@kb.command()
@click.argument("store")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@url_option
@key_option
def add(store: str, paths: tuple[str, ...], url: str, api_key: str | None) -> None:
    """Upload files into STORE (an id, or a name: created when no store has it), a progress
    bar per file, then a table of how each ended."""
    client = _client(url, api_key)
    console = Console()
    with _calling(client):
        target = _find_store(client, store, create=True)
        uploaded: dict[str, Path] = {}
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            console=console,
        ) as progress:
            bars: dict[str, TaskID] = {}
            for raw in paths:
                path = Path(raw)
                bar = progress.add_task(escape(path.name), total=None, state="uploading")
                with path.open("rb") as handle:
                    record = client.files.create(file=(path.name, handle), purpose="assistants")
                uploaded[record.id], bars[record.id] = path, bar
                progress.update(bar, state="queued")
            batch = client.vector_stores.file_batches.create(
                vector_store_id=target.id, file_ids=list(uploaded)
            )
            results = _follow(client, target.id, batch.id, progress, bars)
    _report(console, target, uploaded, results)


def _follow(
    client: Any, store_id: str, batch_id: str, progress: Progress, bars: dict[str, TaskID]
) -> dict[str, Any]:
    """Poll the batch's files until none is in progress, moving each file's bar."""
    while True:
        files = {
            f.id: f
            for f in client.vector_stores.file_batches.list_files(
                batch_id, vector_store_id=store_id, limit=100
            )
        }
        for file_id, found in files.items():
            bar = bars.get(file_id)
            if bar is None:
                continue
            extra = getattr(found, "nobusy", None) or {}
            if found.status == "in_progress":
                done = extra.get("progress", {})
                progress.update(
                    bar,
                    total=done.get("total") or None,
                    completed=done.get("done", 0),
                    state="embedding" if done else "queued",
                )
            else:
                chunks = int(extra.get("chunks", 0)) or 1
                progress.update(bar, total=chunks, completed=chunks, state=_status(found.status))
        if files and all(f.status != "in_progress" for f in files.values()):
            return files
        time.sleep(POLL_SECONDS)


def _report(
    console: Console, store: Any, uploaded: dict[str, Path], results: dict[str, Any]
) -> None:
    table = Table(title=f"Added to {escape(store.name or store.id)} ({store.id})")
    for column in ("file", "file id", "status", "chunks", "error"):
        table.add_column(column, no_wrap=column == "file id")
    failed = 0
    for file_id, path in uploaded.items():
        found = results.get(file_id)
        status = found.status if found is not None else "missing"
        failed += status != "completed"
        extra = (getattr(found, "nobusy", None) or {}) if found is not None else {}
        error = found.last_error.message if found is not None and found.last_error else ""
        table.add_row(
            escape(path.name),
            file_id,
            _status(status),
            str(extra.get("chunks", "")),
            escape(error),
        )
    console.print(table)
    if failed:
        raise SystemExit(1)


@kb.command()
@click.argument("store")
@click.argument("query")
@click.option("-k", "--max-results", default=5, show_default=True, help="Chunks to show (1–50).")
@url_option
@key_option
def search(store: str, query: str, max_results: int, url: str, api_key: str | None) -> None:
    """Search STORE (an id or a name): the best chunks with their scores."""
    client = _client(url, api_key)
    with _calling(client):
        target = _find_store(client, store)
        page = client.vector_stores.search(
            vector_store_id=target.id, query=query, max_num_results=max_results
        )
    table = Table(title=f"{escape(query)} in {escape(target.name or target.id)}", show_lines=True)
    for column in ("#", "score", "file", "passage"):
        table.add_column(column, overflow="fold")
    for rank, hit in enumerate(page.data, 1):
        text = " ".join(part.text for part in hit.content)
        table.add_row(str(rank), f"{hit.score:.3f}", escape(hit.filename), escape(_snippet(text)))
    console = Console()
    console.print(table)
    extra = getattr(page, "nobusy", None) or {}
    if extra.get("vector_store_status") == "in_progress":
        counts = extra.get("file_counts", {})
        console.print(
            f"[yellow]The store is still ingesting ({counts.get('in_progress', '?')} file(s) in "
            "progress): these results come from the files done.[/]"
        )
    if not page.data:
        console.print("No passage matched.")


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"
