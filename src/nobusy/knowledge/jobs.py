"""``Ingestor``: files made searchable in the background — parse, chunk, embed, index.

A file put in a store is recorded ``in_progress`` (``KnowledgeStore.attach``) and handed to a
worker thread, so neither the event loop nor the request waits for parsing or embedding. A
worker ends every file it takes as ``completed`` or ``failed`` with a ``last_error`` a person
can act on (``parsers.ParseError``); whatever else goes wrong is logged and recorded as a
``server_error``, never left ``in_progress``. At start every file still ``in_progress`` (a crash,
a kill, a restart mid-file) is queued again; the index adds no chunk twice (it deduplicates by
the chunk's content hash), so a file taken up again, or uploaded twice, is indexed once.

While a file is embedded, its progress (chunks embedded of chunks) is kept in memory for the
API (``progress``). A file removed from its store, or a batch cancelled, while it is worked on
has its chunks taken back out of the index when the worker finds out.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nobusy.errors import NobusyError
from nobusy.knowledge.chunking import chunk
from nobusy.knowledge.parsers import ParseError, parse
from nobusy.knowledge.settings import KnowledgeSettings
from nobusy.store.blobs import Blobs
from nobusy.store.knowledge import Caller, KnowledgeStore

__all__ = ["EMBED_BATCH", "Ingestor", "Progress"]

log = logging.getLogger("nobusy.knowledge")

EMBED_BATCH = 32  # chunks per embedding call: progress moves, cancellation is noticed
ADMIN = Caller(None, admin=True)
_STOP = ("", "")


@dataclass(slots=True)
class Progress:
    """How far a file's embedding got: ``done`` of ``total`` chunks."""

    done: int = 0
    total: int = 0


class Ingestor:
    """Worker threads that ingest the files recorded ``in_progress``, oldest first.

    ``engine(model)`` gives the (embedder, index) pair of an embedding model.
    """

    def __init__(
        self,
        records: KnowledgeStore,
        blobs: Blobs,
        settings: KnowledgeSettings,
        engine: Callable[[str], tuple[Any, Any]],
        *,
        workers: int = 1,
    ) -> None:
        self.records = records
        self.blobs = blobs
        self.settings = settings
        self.engine = engine
        self.progress: dict[tuple[str, str], Progress] = {}
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"nobusy-ingest-{n}", daemon=True)
            for n in range(workers)
        ]

    def start(self) -> int:
        """Start the workers and queue every file left ``in_progress``; how many there were."""
        for thread in self._threads:
            thread.start()
        pending = self.records.pending()
        for store_id, file_id in pending:
            self.submit(store_id, file_id)
        if pending:
            log.info("resuming the ingestion of %d file(s) left in progress", len(pending))
        return len(pending)

    def submit(self, store_id: str, file_id: str) -> None:
        """Queue a file recorded ``in_progress`` (once, however often it is submitted)."""
        job = (store_id, file_id)
        with self._lock:
            if job in self._queued:
                return
            self._queued.add(job)
        self._queue.put(job)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers; a file being worked on stays ``in_progress`` for the next start."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job == _STOP or self._stopping.is_set():
                return
            with self._lock:
                self._queued.discard(job)
            self.ingest(*job)

    def ingest(self, store_id: str, file_id: str) -> None:
        """Ingest one file and record how it ended (a worker's whole job, also run directly)."""
        placed = self.records.store_file(store_id, file_id)
        store = self.records.store(ADMIN, store_id)
        record = self.records.file(ADMIN, file_id)
        if placed is None or placed.status != "in_progress" or store is None:
            return
        if record is None:
            self._fail(store_id, file_id, "invalid_file", "The file was deleted.")
            return
        index: Any = None
        try:
            data = self.blobs.read(file_id)
            text = parse(record.filename, data, max_bytes=self.settings.max_file_bytes)
            size, overlap = _sizes(placed.chunking, self.settings)
            chunks = chunk(text, size=size, overlap=overlap)
            embedder, index = self.engine(store.embedding_model)
            progress = self.progress.setdefault((store_id, file_id), Progress(0, len(chunks)))
            vectors = []
            for start in range(0, len(chunks), EMBED_BATCH):
                if self._stopping.is_set():
                    return  # stays in_progress: taken up again at the next start
                batch = chunks[start : start + EMBED_BATCH]
                vectors.append(embedder.embed([c.context for c in batch], query=False))
                progress.done += len(batch)
            index.add(store_id, file_id, chunks, np.concatenate(vectors), placed.attributes)
            used = sum(len(c.text.encode()) for c in chunks)
            if not self.records.finish(
                store_id, file_id, "completed", usage_bytes=used, chunks=len(chunks)
            ):
                index.remove_file(store_id, file_id)  # removed or cancelled meanwhile
        except ParseError as exc:
            self._fail(store_id, file_id, exc.code, exc.message)
        except FileNotFoundError:
            self._fail(store_id, file_id, "invalid_file", "The file's bytes are missing.")
        except NobusyError as exc:  # the index refused (another model's store), storage down
            self._fail(store_id, file_id, "server_error", exc.message)
        except Exception as exc:
            # A worker must end every file it takes: whatever a parser or a model raises on a
            # user's document becomes that file's error, and the worker goes on to the next.
            log.exception("ingesting %s into %s failed", file_id, store_id)
            self._fail(store_id, file_id, "server_error", f"Ingestion failed: {exc!r}.")
            if index is not None:
                index.remove_file(store_id, file_id)
        finally:
            self.progress.pop((store_id, file_id), None)

    def _fail(self, store_id: str, file_id: str, code: str, message: str) -> None:
        self.records.finish(store_id, file_id, "failed", error={"code": code, "message": message})


def _sizes(chunking: dict[str, Any] | None, settings: KnowledgeSettings) -> tuple[int, int]:
    """A ``static`` chunking strategy's sizes (read as characters), else the settings'."""
    static = (chunking or {}).get("static") if (chunking or {}).get("type") == "static" else None
    if isinstance(static, dict):
        size = int(static.get("max_chunk_size_tokens", settings.chunk_size))
        overlap = int(static.get("chunk_overlap_tokens", settings.chunk_overlap))
        return size, min(overlap, size - 1)
    return settings.chunk_size, settings.chunk_overlap
