"""Cited answers: an alias's vector stores searched once per request, the passages put into
the prompt numbered, and the answer's ``[n]`` read back as citations.

``retrieve`` runs between parsing and routing (``protocols.pipeline``): the passages join the
original chat body as one system message, before the guard and PII masking see the body, so
they are screened like the user's own words before anything leaves; the walker then carries
that one body through every failover and continuation, so a retry never searches again and
never sees other passages. ``Grounding.citations`` gives what the response carries under
``nobusy.citations``: every passage (index, file, offsets, snippet) and whether the answer
cited it; an answer that cites none of them is marked ``uncited``, and an index that points
at no passage is listed as ``invalid``.

Beside an alias's own stores, a request may name stores of its own in the ``x-nobusy-knowledge``
header (comma-separated ids the key may see, as for search): the console's chat sends a
conversation's attached files that way, and any client can (``extra_headers`` in the SDKs).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from nobusy.errors import InvalidRequest, LocalOnlyStore, NotFound
from nobusy.knowledge.base import KnowledgeBase
from nobusy.store.knowledge import Caller, StoreRecord

__all__ = [
    "HEADER",
    "FileSearch",
    "Grounding",
    "Passage",
    "check_visible",
    "is_local",
    "local_only",
    "query_of",
    "requested",
    "retrieve",
]

ADMIN = Caller(None, admin=True)
SNIPPET = 200
HEADER = "x-nobusy-knowledge"
MAX_REQUESTED = 8
TOP_K = 6  # passages for a request's own stores, when its alias attaches none
_STORE_ID = re.compile(r"vs_[0-9a-f]{24}")
_CITE = re.compile(r"\[(\d{1,3})\]")
INSTRUCTION = (
    "Answer from the numbered sources below. After each sentence that uses a source, cite it "
    "as [n] with its number. If the sources do not answer the question, say so and cite none."
)


@dataclass(frozen=True, slots=True)
class FileSearch:
    """Stores a request asks to be searched itself (``x-nobusy-knowledge``, or a Responses
    ``file_search`` tool), with how many passages and which filters."""

    stores: tuple[str, ...]
    top_k: int = TOP_K
    filters: dict[str, Any] | None = None
    score_threshold: float = 0.0
    query: str = ""  # what is searched for, where a protocol reports it (Responses' queries)


@dataclass(frozen=True, slots=True)
class Passage:
    index: int
    store_id: str
    file_id: str
    filename: str
    start: int
    end: int
    text: str
    score: float


@dataclass(slots=True)
class Grounding:
    """The passages of one request, and the answer's text as it streams."""

    passages: list[Passage]
    answer: list[str] = field(default_factory=list)

    def prompt(self) -> str:
        sources = "\n\n".join(f"[{p.index}] ({p.filename})\n{p.text}" for p in self.passages)
        return f"{INSTRUCTION}\n\n{sources}"

    def apply(self, body: dict[str, Any]) -> None:
        """Put the passages into ``body`` as a system message after the leading ones."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not self.passages:
            return
        at = 0
        while at < len(messages) and _role(messages[at]) in ("system", "developer"):
            at += 1
        messages.insert(at, {"role": "system", "content": self.prompt()})

    async def tap(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Pass the answer's chunks on, keeping its text for ``citations``."""
        async for chunk in chunks:
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    self.answer.append(content)
            yield chunk

    def sources(self) -> list[dict[str, Any]]:
        """Where each passage came from, for the audit log."""
        return [
            {"index": p.index, "vector_store_id": p.store_id, "file_id": p.file_id,
             "filename": p.filename, "start": p.start, "end": p.end}
            for p in self.passages
        ]  # fmt: skip

    def citations(self, text: str | None = None) -> dict[str, Any]:
        """``nobusy.citations`` for an answer (``text``, else what ``tap`` saw)."""
        said = "".join(self.answer) if text is None else text
        numbers = [int(n) for n in _CITE.findall(said)]
        known = {p.index for p in self.passages}
        cited = sorted({n for n in numbers if n in known})
        return {
            "citations": [
                {
                    "index": p.index,
                    "file_id": p.file_id,
                    "filename": p.filename,
                    "vector_store_id": p.store_id,
                    "start": p.start,
                    "end": p.end,
                    "score": round(p.score, 6),
                    "snippet": p.text[:SNIPPET],
                    "cited": p.index in cited,
                }
                for p in self.passages
            ],
            "cited": cited,
            "uncited": not cited,
            "invalid": sorted({n for n in numbers if n not in known}),
        }


def requested(header: str | None) -> tuple[str, ...]:
    """The vector stores a request names in ``x-nobusy-knowledge``, each once, in order."""
    if header is None:
        return ()
    ids = tuple(dict.fromkeys(part.strip() for part in header.split(",") if part.strip()))
    if not ids or len(ids) > MAX_REQUESTED or not all(_STORE_ID.fullmatch(i) for i in ids):
        raise InvalidRequest(
            f"{HEADER} must name 1 to {MAX_REQUESTED} vector store ids (vs_…), comma-separated.",
            param=HEADER,
        )
    return ids


async def check_visible(kb: KnowledgeBase | None, caller: Caller, ids: tuple[str, ...]) -> None:
    """Refuse stores the caller may not see as missing (404), as search does."""
    if kb is None:
        raise InvalidRequest(f"The knowledge base is off here, so {HEADER} cannot be used.")

    def missing() -> list[str]:
        return [i for i in ids if kb.records.store(caller, i) is None]

    if gone := await run_in_threadpool(missing):
        raise NotFound(f"No vector store {gone[0]!r}.", param=HEADER)


def is_local(upstream: Any) -> bool:
    """Whether an upstream runs on premises: the embedded kind, or one marked ``local``."""
    return upstream.kind == "embedded" or bool(getattr(upstream.settings, "local", False))


def local_only(store: StoreRecord) -> bool:
    """A store whose passages may reach local upstreams only (metadata ``local_only``)."""
    return str(store.metadata.get("local_only", "")).lower() in ("true", "1", "yes")


async def retrieve(
    kb: KnowledgeBase,
    stores: tuple[str, ...],
    top_k: int,
    body: dict[str, Any],
    *,
    remote: list[str] | None = None,
    filters: dict[str, Any] | None = None,
    score_threshold: float = 0.0,
) -> Grounding | None:
    """The ``top_k`` best passages of ``stores`` for the last user message, best first
    (None when the request has no user text to search with). ``remote``: the upstreams off
    premises the request may reach; a ``local_only`` store then refuses (LocalOnlyStore),
    before anything is searched."""
    query = query_of(body.get("messages"))
    if not query:
        return None

    def search() -> list[Passage]:
        found = []
        records = [kb.records.store(ADMIN, store_id) for store_id in stores]
        for store in records:
            if store is not None and remote and local_only(store):
                raise LocalOnlyStore(
                    f"Vector store {store.id} is local_only: its passages may go to local "
                    f"upstreams only, and this model may send them to {', '.join(remote)}. "
                    "Mark those upstreams `local: true` if they run on premises, or use a "
                    "model whose routes are all local."
                )
        # A store deleted since the alias named it is skipped: the others still answer.
        present = [store for store in records if store is not None]
        for hits in kb.search_each(
            present,
            query,
            k=top_k,
            filters=filters,
            score_threshold=score_threshold,
            source="grounding",
        ):
            found.extend(hits)
        found.sort(key=lambda hit: hit.score, reverse=True)
        found = found[:top_k]
        names = kb.records.filenames(list({hit.file_id for hit in found}))
        return [
            Passage(
                n, h.store_id, h.file_id, names.get(h.file_id, ""), h.start, h.end, h.text, h.score
            )
            for n, h in enumerate(found, 1)
        ]

    return Grounding(await run_in_threadpool(search))


def _role(message: Any) -> str:
    return str(message.get("role", "")) if isinstance(message, dict) else ""


def query_of(messages: Any) -> str:
    """What a request searches with: the text of its last user message (at most 4 KiB)."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if _role(message) != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content[:4096]
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
            return " ".join(t for t in texts if isinstance(t, str))[:4096]
    return ""
