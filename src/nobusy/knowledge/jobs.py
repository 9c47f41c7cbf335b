"""``Ingestor``: files made searchable in the background — parse, chunk, embed, index.

A file put in a store is recorded ``in_progress`` (``KnowledgeStore.attach``) and handed to a
worker thread, so neither the event loop nor the request waits for parsing or embedding. A
worker ends every file it takes as ``completed`` or ``failed`` with a ``last_error`` a person
can act on (``parsers.ParseError``); whatever else goes wrong is logged and recorded as a
``server_error``, never left ``in_progress``. At start every file still ``in_progress`` (a crash,
a kill, a restart mid-file) is queued again; the index adds no chunk twice (it deduplicates by
the chunk's content hash), so a file taken up again, or uploaded twice, is indexed once; and
only chunks the store does not hold yet are embedded, which is most of the work, so a file
taken up again goes on from where it stopped.

A worker takes a file only by claiming it (``claims``): the processes of ``--workers N`` share
the records, and each file is ingested by one of them. A lease thread renews this process's
claims and, every few seconds, queues files whose claim went void (a process killed mid-file).

A file's chunks are embedded a group at a time, and each group is handed to one indexing
thread while the next group is embedded: embedding is numpy (it lets go of the GIL), indexing
is mostly jieba (it holds it), so on two cores the two overlap. A file's chunks become
searchable group by group, as a store still ingesting is searched (what is done). While a file
is embedded its progress (texts embedded of texts to embed) is kept in memory for the API
(``progress``). A file removed from its store, or a batch cancelled, while it is worked on has
its chunks taken back out of the index when the worker finds out.

How each file ended, and the time each stage took, are counted in ``stats`` (``/metrics``);
``health`` says how many workers are alive and how many files this process holds.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from nobusy.errors import NobusyError
from nobusy.knowledge.chunking import Chunk, chunk
from nobusy.knowledge.claims import LEASE_SECONDS, worker_id
from nobusy.knowledge.parsers import ParseError, parse
from nobusy.knowledge.settings import KnowledgeSettings
from nobusy.knowledge.stats import KnowledgeStats
from nobusy.store.interfaces import FileBytes
from nobusy.store.knowledge import Caller, KnowledgeStore

__all__ = ["EMBED_BATCH", "INDEX_GROUP", "Ingestor", "Progress", "Workers"]

log = logging.getLogger("nobusy.knowledge")

EMBED_BATCH = 32  # texts per embedding call: progress moves, stopping is noticed
INDEX_GROUP = 4 * EMBED_BATCH  # chunks handed to the indexing thread at once
ADMIN = Caller(None, admin=True)
_STOP = ("", "")


@dataclass(slots=True)
class Progress:
    """How far a file's embedding got: ``done`` of ``total`` texts."""

    done: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class Workers:
    """The ingestion workers of this process now: alive of configured, files queued, files
    being worked on."""

    alive: int
    configured: int
    waiting: int
    ingesting: int


class _Ended(NamedTuple):
    """How one file's ingestion ended, for ``stats``."""

    outcome: str
    code: str | None = None
    size: int = 0
    chunks: int = 0


class _Stopping(Exception):
    """The workers are stopping: the file stays ``in_progress`` for the next start."""


class Ingestor:
    """Worker threads that ingest the files recorded ``in_progress``, oldest first.

    ``engine(model)`` gives the (embedder, index) pair of an embedding model.
    """

    def __init__(
        self,
        records: KnowledgeStore,
        blobs: FileBytes,
        settings: KnowledgeSettings,
        engine: Callable[[str], tuple[Any, Any]],
        *,
        workers: int = 1,
        stats: KnowledgeStats | None = None,
    ) -> None:
        self.records = records
        self.blobs = blobs
        self.settings = settings
        self.engine = engine
        self.me = worker_id()
        self.stats = stats if stats is not None else KnowledgeStats()
        self.progress: dict[tuple[str, str], Progress] = {}
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._working: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._indexer = ThreadPoolExecutor(1, thread_name_prefix="nobusy-index")
        self._threads = [
            threading.Thread(target=self._run, name=f"nobusy-ingest-{n}", daemon=True)
            for n in range(workers)
        ]
        self._lease = threading.Thread(target=self._renew, name="nobusy-ingest-lease", daemon=True)

    def start(self) -> int:
        """Start the workers and queue every file left ``in_progress`` that no running worker
        holds; how many there were."""
        for thread in self._threads:
            thread.start()
        pending = self.records.claimable(self.me)
        for store_id, file_id in pending:
            self.submit(store_id, file_id)
        if pending:
            log.info("resuming the ingestion of %d file(s) left in progress", len(pending))
        self._lease.start()
        return len(pending)

    def submit(self, store_id: str, file_id: str) -> None:
        """Queue a file recorded ``in_progress`` (once, however often it is submitted)."""
        job = (store_id, file_id)
        with self._lock:
            if job in self._queued or job in self._working:
                return
            self._queued.add(job)
        self._queue.put(job)

    def health(self) -> Workers:
        """Workers alive and files held, read from memory (a ``/readyz`` never waits)."""
        with self._lock:
            waiting, ingesting = len(self._queued), len(self._working)
        alive = sum(thread.is_alive() for thread in self._threads)
        return Workers(alive, len(self._threads), waiting, ingesting)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the workers; a file being worked on stays ``in_progress`` for the next start."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in (*self._threads, self._lease):
            if thread.is_alive():
                thread.join(timeout)
        self._indexer.shutdown(wait=True, cancel_futures=True)
        try:
            self.records.release(self.me)  # the next start, in this process too, takes them up
        except NobusyError:
            log.exception("releasing the ingestion claims failed")

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job == _STOP or self._stopping.is_set():
                return
            with self._lock:
                self._queued.discard(job)
                self._working.add(job)
            try:
                if self.records.claim(*job, self.me):
                    self.ingest(*job)
            except NobusyError:  # the records are unavailable: the lease thread retries
                log.exception("claiming %s in %s failed", job[1], job[0])
            finally:
                with self._lock:
                    self._working.discard(job)

    def _renew(self) -> None:
        """Renew this process's claims; queue files whose claims went void."""
        while not self._stopping.wait(LEASE_SECONDS / 6):
            try:
                with self._lock:
                    working = list(self._working)
                self.records.renew(self.me, working)
                for store_id, file_id in self.records.claimable(self.me):
                    self.submit(store_id, file_id)
            except NobusyError:
                log.exception("renewing the ingestion claims failed")

    def ingest(self, store_id: str, file_id: str) -> None:
        """Ingest one file and record how it ended (a worker's whole job, also run directly)."""
        started = time.perf_counter()
        ended = self._ingest(store_id, file_id)
        if ended is not None:  # None: not this worker's to end, or left for the next start
            seconds = time.perf_counter() - started
            self.stats.ingested(
                ended.outcome, seconds, code=ended.code, size=ended.size, chunks=ended.chunks
            )

    def _ingest(self, store_id: str, file_id: str) -> _Ended | None:
        placed = self.records.store_file(store_id, file_id)
        store = self.records.store(ADMIN, store_id)
        record = self.records.file(ADMIN, file_id)
        if placed is None or placed.status != "in_progress" or store is None:
            return None
        if record is None:
            return self._fail(store_id, file_id, "invalid_file", "The file was deleted.")
        index: Any = None
        try:
            with self._stage("parse"):  # reading the bytes included: they may be in PostgreSQL
                data = self.blobs.read(file_id)
                text = parse(record.filename, data, max_bytes=self.settings.max_file_bytes)
            size, overlap = _sizes(placed.chunking, self.settings)
            with self._stage("chunk"):
                chunks = chunk(text, size=size, overlap=overlap)
            embedder, index = self.engine(store.embedding_model)
            self._embed_and_index(store_id, file_id, chunks, embedder, index, placed.attributes)
            now = self.records.store_file(store_id, file_id)
            if now is not None and now.attributes != placed.attributes:
                index.set_attributes(store_id, file_id, now.attributes)  # changed meanwhile
            used = sum(len(c.text.encode()) for c in chunks)
            if not self.records.finish(
                store_id, file_id, "completed", usage_bytes=used, chunks=len(chunks)
            ):
                index.remove_file(store_id, file_id)  # removed or cancelled meanwhile
                return _Ended("cancelled")
            return _Ended("completed", size=record.bytes, chunks=len(chunks))
        except _Stopping:
            return None  # stays in_progress: taken up again (from where it stopped) at next start
        except ParseError as exc:
            return self._fail(store_id, file_id, exc.code, exc.message)
        except FileNotFoundError:
            return self._fail(store_id, file_id, "invalid_file", "The file's bytes are missing.")
        except NobusyError as exc:  # the index refused (another model's store), storage down
            ended = self._fail(store_id, file_id, "server_error", exc.message)
            if index is not None:
                index.remove_file(store_id, file_id)
            return ended
        except Exception as exc:
            if self._stopping.is_set():
                return None  # the indexing thread is shut down: stays in_progress for next start
            # A worker must end every file it takes: whatever a parser or a model raises on a
            # user's document becomes that file's error, and the worker goes on to the next.
            log.exception("ingesting %s into %s failed", file_id, store_id)
            ended = self._fail(store_id, file_id, "server_error", f"Ingestion failed: {exc!r}.")
            if index is not None:
                index.remove_file(store_id, file_id)
            return ended
        finally:
            self.progress.pop((store_id, file_id), None)

    def _embed_and_index(
        self,
        store_id: str,
        file_id: str,
        chunks: list[Chunk],
        embedder: Any,
        index: Any,
        attributes: dict[str, Any],
    ) -> None:
        """Embed the chunks the store does not hold yet, a group at a time, each group indexed
        by the indexing thread while the next is embedded."""
        with self._stage("index"):
            known = index.known(store_id, chunks)
        embedded: dict[str, npt.NDArray[np.float32]] = {}  # a text repeated is embedded once
        to_embed = {c.context for c, k in zip(chunks, known, strict=True) if not k}
        progress = self.progress.setdefault((store_id, file_id), Progress(0, len(to_embed)))
        adding: Future[Any] | None = None
        try:
            for first in range(0, max(len(chunks), 1), INDEX_GROUP):
                group = chunks[first : first + INDEX_GROUP]
                vectors = np.zeros((len(group), embedder.dimensions), dtype=np.float32)
                texts = [
                    c.context
                    for c, k in zip(group, known[first : first + INDEX_GROUP], strict=True)
                    if not k and c.context not in embedded
                ]
                texts = list(dict.fromkeys(texts))
                for start in range(0, len(texts), EMBED_BATCH):
                    if self._stopping.is_set():
                        raise _Stopping
                    batch = texts[start : start + EMBED_BATCH]
                    with self._stage("embed"):
                        rows = embedder.embed(batch, query=False)
                    embedded.update(zip(batch, rows, strict=True))
                    progress.done += len(batch)
                for i, piece in enumerate(group):
                    # A chunk the store holds keeps its stored vector: the index ignores this.
                    row = embedded.get(piece.context)
                    if row is not None:
                        vectors[i] = row
                if adding is not None:
                    adding.result()  # one group indexed while the next was embedded
                adding = self._indexer.submit(
                    self._add, index, store_id, file_id, group, vectors, attributes
                )
        finally:
            if adding is not None:
                adding.result()

    def _add(self, index: Any, *args: Any) -> None:
        """``index.add`` on the indexing thread, its time counted as the ``index`` stage."""
        with self._stage("index"):
            index.add(*args)

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stats.staged(name, time.perf_counter() - started)

    def _fail(self, store_id: str, file_id: str, code: str, message: str) -> _Ended:
        error = {"code": code, "message": message}
        if self.records.finish(store_id, file_id, "failed", error=error):
            return _Ended("failed", code=code)
        return _Ended("cancelled")  # it left its store meanwhile: no one sees this error


def _sizes(chunking: dict[str, Any] | None, settings: KnowledgeSettings) -> tuple[int, int]:
    """A ``static`` chunking strategy's sizes (read as characters), else the settings'."""
    static = (chunking or {}).get("static") if (chunking or {}).get("type") == "static" else None
    if isinstance(static, dict):
        size = int(static.get("max_chunk_size_tokens", settings.chunk_size))
        overlap = int(static.get("chunk_overlap_tokens", settings.chunk_overlap))
        return size, min(overlap, size - 1)
    return settings.chunk_size, settings.chunk_overlap
