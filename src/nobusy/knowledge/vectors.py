"""Nearest-neighbour search over one store's vectors, held in memory.

A store's vectors are read from SQLite into one float32 matrix on its first search; when the
store changes, the rows added since are read beside it (``refreshed``), and the whole store
again when rows went or many came. A query is a matrix-vector product (cosine: rows are
normalised).

Up to ``EXACT_BELOW`` rows every row is scored. A larger store is cut into partitions by
k-means on its vectors (an inverted file, IVF: Jégou et al. 2011), its rows stored partition
by partition, and a query scores the partitions' centroids, then every row of the
``PROBED_SHARE`` of partitions closest to it, exactly. At 100,000 rows that reads a tenth of
the matrix instead of all 195 MB (the exact product was ~15 ms of CPU a query, memory-bound);
what it can miss is a close row whose partition's centroid is far from the query
(docs/knowledge.md, "Search speed", has the recall measured against the exact search).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["EXACT_BELOW", "PROBED_SHARE", "StoreVectors"]

EXACT_BELOW = 20_000
PROBED_SHARE = 1 / 8
_ROWS_PER_PARTITION = 400
_TRAINING_ROWS_PER_PARTITION = 32
_ITERATIONS = 8
_SEED = 15
_ADDED_ROWS = 2_000  # rows added since a load scored exactly, at least, before a reload


@dataclass(frozen=True)
class StoreVectors:
    """A store's chunk ids, the file each row belongs to, and their vectors.

    ``files[codes[i]]`` is row ``i``'s (store, file); a chunk held by two files has two rows.
    ``starts`` (one more than the partitions) bounds each partition's rows; no partitions:
    every row is scored."""

    ids: npt.NDArray[np.int64]
    codes: npt.NDArray[np.int32]
    files: tuple[tuple[str, str], ...]
    matrix: npt.NDArray[np.float32]
    centroids: npt.NDArray[np.float32] | None = None
    starts: npt.NDArray[np.int64] | None = None
    # The last ``chunk_files`` row read, and the rows added since, scored exactly.
    last_row: int = 0
    added: StoreVectors | None = None

    @property
    def rows(self) -> int:
        """How many (chunk, file) rows it holds, added ones included."""
        return len(self.ids) + (self.added.rows if self.added is not None else 0)

    @classmethod
    def load(cls, db: sqlite3.Connection, store_id: str) -> StoreVectors:
        """Every row of the store, partitioned when there are many."""
        with _snapshot(db):
            return cls._read(db, store_id, 0, partition=True)

    @classmethod
    def _read(
        cls, db: sqlite3.Connection, store_id: str, after: int, *, partition: bool
    ) -> StoreVectors:
        # One row per file holding a chunk: a filter may allow any of them. Rows are copied
        # into the matrix as they come (holding them all first doubled the memory of a load).
        count, dims, last = db.execute(
            "SELECT count(*), max(length(c.vector)) / 4, max(cf.rowid) FROM chunks c "
            "JOIN chunk_files cf ON cf.chunk_id = c.id WHERE c.store_id = ? AND cf.rowid > ?",
            (store_id, after),
        ).fetchone()
        if not count:
            empty = np.zeros((0, 1), np.float32)
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), (), empty, last_row=after)
        ids = np.empty(count, dtype=np.int64)
        codes = np.empty(count, dtype=np.int32)
        matrix = np.empty((count, dims), dtype=np.float32)
        code_of: dict[str, int] = {}
        rows = db.execute(
            "SELECT c.id, cf.file_id, c.vector FROM chunks c JOIN chunk_files cf "
            "ON cf.chunk_id = c.id WHERE c.store_id = ? AND cf.rowid > ? ORDER BY c.id",
            (store_id, after),
        )
        for i, (chunk_id, file_id, blob) in enumerate(rows):
            ids[i] = chunk_id
            codes[i] = code_of.setdefault(file_id, len(code_of))
            matrix[i] = np.frombuffer(blob, dtype=np.float32)
        files = tuple((store_id, file_id) for file_id in code_of)
        if partition:
            return replace(cls.partitioned(ids, codes, files, matrix), last_row=last)
        return cls(ids, codes, files, matrix, last_row=last)

    def refreshed(self, db: sqlite3.Connection, store_id: str) -> StoreVectors:
        """The store's vectors as they are now in ``db``: these when nothing changed, these
        with the rows added since when rows were only added (a file ingested: no reload of the
        store, no new partitions), else all of them read again."""
        with _snapshot(db):
            count, last = db.execute(
                "SELECT count(*), coalesce(max(rowid), 0) FROM chunk_files WHERE store_id = ?",
                (store_id,),
            ).fetchone()
            if count == self.rows and last == self.last_row:
                return self
            new = StoreVectors._read(db, store_id, self.last_row, partition=False)
            # Rows removed too (or more added than is worth scoring exactly): read again.
            if count != self.rows + len(new.ids) or (
                len(new.ids) + (self.added.rows if self.added else 0)
                > max(_ADDED_ROWS, self.rows // 10)
            ):
                return StoreVectors._read(db, store_id, 0, partition=True)
        added = new if self.added is None else self.added.joined(new)
        return replace(self, added=added, last_row=new.last_row)

    def joined(self, other: StoreVectors) -> StoreVectors:
        """These unpartitioned rows and ``other``'s, as one unpartitioned set."""
        code_of = {f: i for i, f in enumerate(self.files)}
        for f in other.files:
            code_of.setdefault(f, len(code_of))
        remap = np.array([code_of[f] for f in other.files], dtype=np.int32)
        matrices = [m for m in (self.matrix, other.matrix) if len(m)]
        return StoreVectors(
            np.concatenate([self.ids, other.ids]),
            np.concatenate([self.codes, remap[other.codes] if len(remap) else other.codes]),
            tuple(code_of),
            np.concatenate(matrices) if matrices else self.matrix,
            last_row=max(self.last_row, other.last_row),
        )

    @classmethod
    def partitioned(
        cls,
        ids: npt.NDArray[np.int64],
        codes: npt.NDArray[np.int32],
        files: tuple[tuple[str, str], ...],
        matrix: npt.NDArray[np.float32],
    ) -> StoreVectors:
        """The rows as they are below ``EXACT_BELOW``; above, grouped into k-means partitions."""
        if len(ids) < EXACT_BELOW:
            return cls(ids, codes, files, matrix)
        centroids = _kmeans(matrix, max(len(ids) // _ROWS_PER_PARTITION, 1))
        nearest = _assign(matrix, centroids)
        order = np.argsort(nearest, kind="stable")
        starts = np.searchsorted(nearest[order], np.arange(len(centroids) + 1)).astype(np.int64)
        return cls(
            ids[order],
            codes[order],
            files,
            np.ascontiguousarray(matrix[order]),
            centroids,
            starts,
        )

    def nearest(
        self,
        vector: npt.NDArray[np.float32],
        limit: int,
        allowed: set[tuple[str, str]] | None = None,
    ) -> list[tuple[int, float, str]]:
        """The ``limit`` closest chunks as (chunk id, cosine, file id), closest first."""
        found = self._nearest(vector, limit, allowed)
        if self.added is None:
            return found
        found += self.added.nearest(vector, limit, allowed)
        found.sort(key=lambda hit: -hit[1])
        out: dict[int, tuple[int, float, str]] = {}
        for hit in found:
            out.setdefault(hit[0], hit)
        return list(out.values())[:limit]

    def _nearest(
        self,
        vector: npt.NDArray[np.float32],
        limit: int,
        allowed: set[tuple[str, str]] | None,
    ) -> list[tuple[int, float, str]]:
        if not len(self.ids) or self.matrix.shape[1] != vector.shape[0]:
            return []
        mask: npt.NDArray[np.bool_] | None = None
        if allowed is not None:
            mask = np.isin(self.codes, [i for i, f in enumerate(self.files) if f in allowed])
            if not mask.any():
                return []
        rows: npt.NDArray[np.int64] | None
        with _one_blas_thread():
            if mask is not None and self.centroids is not None and mask.sum() < EXACT_BELOW:
                # The rows a filter allows, when few, are all scored: probing partitions
                # would find only those that happen to lie in the probed ones.
                rows = np.flatnonzero(mask)
                scores = self.matrix[rows] @ vector
            else:
                rows, scores = self._scores(vector)
                if mask is not None:
                    scores = np.where(mask if rows is None else mask[rows], scores, -np.inf)
        codes = self.codes if rows is None else self.codes[rows]
        # Over-fetch a little: a chunk held by two files has two rows.
        fetch = min(limit * 2, len(scores))
        top = np.argpartition(-scores, fetch - 1)[:fetch]
        top = top[np.argsort(-scores[top])]
        ids = self.ids if rows is None else self.ids[rows]
        out: dict[int, tuple[int, float, str]] = {}
        for i in top:
            chunk_id = int(ids[i])
            if np.isfinite(scores[i]) and chunk_id not in out:
                out[chunk_id] = (chunk_id, float(scores[i]), self.files[codes[i]][1])
        return list(out.values())[:limit]

    def _scores(
        self, vector: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.int64] | None, npt.NDArray[np.float32]]:
        """The rows scored (None: all of them, in order) and their cosines with ``vector``."""
        if self.centroids is None or self.starts is None:
            return None, self.matrix @ vector
        probes = max(int(np.ceil(len(self.centroids) * PROBED_SHARE)), 1)
        closest = np.sort(np.argpartition(-(self.centroids @ vector), probes - 1)[:probes])
        # Each partition's rows are one slice of the matrix: no copy of them is made.
        spans = [(int(self.starts[p]), int(self.starts[p + 1])) for p in closest]
        rows = np.concatenate([np.arange(a, b) for a, b in spans])
        scores = np.concatenate([self.matrix[a:b] @ vector for a, b in spans])
        return rows, scores


@contextmanager
def _snapshot(db: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: the statements of a load see the same rows (another process
    may be adding some)."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


_controller: Any = None
_controller_lock = threading.Lock()


def _one_blas_thread() -> AbstractContextManager[Any]:
    """OpenBLAS held to one thread while a query is scored.

    Left alone it splits each product over every core, and a probed partition's product is
    small: on the shared 2-core machine the threads' hand-offs cost more than the arithmetic
    (measured at 100,000 chunks: 11 ms of CPU a query with two threads, 2.4 ms with one)."""
    global _controller
    with _controller_lock:
        if _controller is None:
            try:
                from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
            except ImportError:  # an optional speed-up, as for the embedder
                _controller = False
            else:
                _controller = ThreadpoolController()
    if _controller is False:
        return nullcontext()
    limit: AbstractContextManager[Any] = _controller.limit(limits=1, user_api="blas")
    return limit


def _kmeans(matrix: npt.NDArray[np.float32], parts: int) -> npt.NDArray[np.float32]:
    """``parts`` unit-length centroids by spherical k-means on a sample of the rows."""
    rng = np.random.default_rng(_SEED)
    sample_size = min(len(matrix), parts * _TRAINING_ROWS_PER_PARTITION)
    sample = matrix[np.sort(rng.choice(len(matrix), sample_size, replace=False))]
    centroids = sample[rng.choice(len(sample), parts, replace=False)].copy()
    for _ in range(_ITERATIONS):
        nearest = _assign(sample, centroids)
        order = np.argsort(nearest, kind="stable")
        counts = np.bincount(nearest, minlength=parts)
        firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sums = np.zeros_like(centroids)
        sums[counts > 0] = np.add.reduceat(sample[order], firsts[counts > 0])
        empty = counts == 0
        # A partition that lost all its rows starts again from a random row.
        sums[empty] = sample[rng.choice(len(sample), int(empty.sum()), replace=False)]
        centroids = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return np.asarray(centroids, dtype=np.float32)


def _assign(
    matrix: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]
) -> npt.NDArray[np.int64]:
    """Each row's closest centroid, a block of rows at a time (bounded temporary memory)."""
    out = np.empty(len(matrix), dtype=np.int64)
    for first in range(0, len(matrix), 8192):
        out[first : first + 8192] = np.argmax(matrix[first : first + 8192] @ centroids.T, axis=1)
    return out
