"""``KnowledgeBase``: what a running server (and ``nobusy kb``) holds of the knowledge base.

It puts together the records (``store.knowledge``), the uploaded bytes (``store.blobs``), the
index and embedder of each embedding model (loaded on first use: a server that never sees a
document loads neither) and the ingestion workers (``jobs``). Every store records the model
its vectors come from; ingestion and search always use that model, so a change of
``knowledge.embedding_model`` applies to new stores and never mixes two models in one.

Files uploaded with ``expires_after`` are hidden from every caller once they expire and deleted
(bytes, record, chunks) by a sweeper thread within ``SWEEP_SECONDS``, as OpenAI deletes them.

What it did is counted in ``stats`` (``/metrics``) and how its threads are is ``health``
(``/readyz``), both read from memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from nobusy.errors import ConfigError, NobusyError
from nobusy.knowledge.embedder import Embedder, canonical_name, load_embedder
from nobusy.knowledge.index import Hit
from nobusy.knowledge.jobs import Ingestor
from nobusy.knowledge.stats import KnowledgeStats
from nobusy.settings import Settings
from nobusy.store.backends import open_blobs, open_index, open_knowledge
from nobusy.store.interfaces import ChunkIndex
from nobusy.store.knowledge import Caller, StoreRecord

__all__ = ["SWEEP_SECONDS", "KnowledgeBase", "KnowledgeHealth"]

log = logging.getLogger("nobusy.knowledge")

SWEEP_SECONDS = 60.0  # how often expired files are looked for; they are hidden meanwhile


@dataclass(frozen=True, slots=True)
class KnowledgeHealth:
    """This process's ingestion workers and sweeper now; ``ok`` while none of them died."""

    workers_alive: int
    workers_configured: int
    waiting: int  # files queued for this process's workers
    ingesting: int  # files a worker of this process holds
    sweeper_alive: bool

    @property
    def ok(self) -> bool:
        return self.workers_alive >= self.workers_configured and self.sweeper_alive

    def json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class KnowledgeBase:
    """Records, bytes, indexes and ingestion of one data directory; ``start`` resumes work."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings.knowledge
        self.data_dir = settings.data_dir
        self._all_settings = settings
        model = canonical_name(self.settings.embedding_model)
        if model is None:
            raise ConfigError(
                f"knowledge.embedding_model: unknown model {self.settings.embedding_model!r}"
            )
        self.default_model = model
        # SQLite and files in data_dir, or with `store` the PostgreSQL every replica shares.
        self.records = open_knowledge(settings)
        self.blobs = open_blobs(settings)
        self._indexes: dict[str, ChunkIndex] = {}
        self._lock = threading.Lock()
        self.stats = KnowledgeStats()
        self.ingestor = Ingestor(
            self.records,
            self.blobs,
            self.settings,
            self.engine,
            workers=self.settings.workers,
            stats=self.stats,
        )
        self._stopping = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="nobusy-kb-sweep", daemon=True)

    def start(self) -> int:
        """Start the ingestion workers and the sweeper; how many files left in progress the
        workers took up again."""
        self._sweeper.start()
        return self.ingestor.start()

    def health(self) -> KnowledgeHealth:
        """The workers and the sweeper, read from memory (no database is asked)."""
        workers = self.ingestor.health()
        return KnowledgeHealth(
            workers.alive,
            workers.configured,
            workers.waiting,
            workers.ingesting,
            self._sweeper.is_alive(),
        )

    def close(self) -> None:
        self._stopping.set()
        if self._sweeper.is_alive():
            self._sweeper.join(5.0)
        self.ingestor.close()
        with self._lock:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()
        self.records.close()
        close = getattr(self.blobs, "close", None)
        if close is not None:
            close()

    def engine(self, model: str) -> tuple[Embedder, ChunkIndex]:
        """The embedder of ``model`` and the index its stores' vectors are kept in."""
        return load_embedder(model), self.index(model)

    def index(self, model: str) -> ChunkIndex:
        """The index of ``model``'s stores, opened once (no model loaded for it)."""
        name = canonical_name(model) or model
        with self._lock:
            index = self._indexes.get(name)
            if index is None:
                index = open_index(self._all_settings, name)
                self._indexes[name] = index
        return index

    def search(
        self,
        store: StoreRecord,
        query: str,
        *,
        k: int,
        filters: dict[str, Any] | None,
        score_threshold: float,
        source: Literal["api", "grounding"] = "api",
    ) -> list[Hit]:
        """The ``k`` best chunks of ``store`` for ``query`` (BM25 and vectors fused); blocking.
        ``source`` says who asked (the search API, a grounded answer), for ``stats``."""
        [hits] = self.search_each(
            [store], query, k=k, filters=filters, score_threshold=score_threshold, source=source
        )
        return hits

    def search_each(
        self,
        stores: Sequence[StoreRecord],
        query: str,
        *,
        k: int,
        filters: dict[str, Any] | None,
        score_threshold: float,
        source: Literal["api", "grounding"] = "api",
    ) -> list[list[Hit]]:
        """``search`` in each of ``stores``, the query embedded once per model; blocking."""
        vectors: dict[str, npt.NDArray[np.float32]] = {}
        out: list[list[Hit]] = []
        for store in stores:
            started, ok = time.perf_counter(), False
            try:
                embedder, index = self.engine(store.embedding_model)
                vector = vectors.get(store.embedding_model)
                if vector is None:
                    vector = vectors[store.embedding_model] = embedder.embed([query], query=True)[0]
                hits: list[Hit] = index.search(
                    [store.id], query, vector, k=k, filters=filters, score_threshold=score_threshold
                )
                ok = True
            finally:
                self.stats.searched(source, time.perf_counter() - started, ok=ok)
            out.append(hits)
        return out

    def delete_file(self, file_id: str) -> None:
        """Delete a file: its record, its chunks in every store that held it, its bytes."""
        for store_id in self.records.delete_file(file_id):
            store = self.records.store(Caller(None, admin=True), store_id)
            if store is not None:
                self.forget_file(store, file_id)
        self.blobs.delete(file_id)

    def sweep_expired(self, now: int | None = None) -> int:
        """Delete the files past their ``expires_at``; how many."""
        swept = 0
        while batch := self.records.expired_files(now):
            for file_id in batch:
                self.delete_file(file_id)
            swept += len(batch)
            self.stats.swept_files(len(batch))
        return swept

    def _sweep(self) -> None:
        while not self._stopping.wait(SWEEP_SECONDS):
            try:
                if swept := self.sweep_expired():
                    log.info("deleted %d expired file(s)", swept)
            except NobusyError:  # the records are unavailable: the next round tries again
                log.exception("deleting expired files failed")

    def forget_file(self, store: StoreRecord, file_id: str) -> None:
        """Take a file's chunks out of a store's index (blocking)."""
        self.index(store.embedding_model).remove_file(store.id, file_id)

    def forget_store(self, store: StoreRecord) -> None:
        self.index(store.embedding_model).remove_store(store.id)
