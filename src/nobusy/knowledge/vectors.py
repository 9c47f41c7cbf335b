"""Exact nearest-neighbour search over one store's vectors, held in memory.

A store's vectors are read from SQLite into one float32 matrix on its first search and dropped
when the store changes; a query is one matrix-vector product (cosine: rows are normalised).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["StoreVectors"]


@dataclass(frozen=True)
class StoreVectors:
    """A store's chunk ids, the (store, file) each belongs to, and their vectors."""

    ids: npt.NDArray[np.int64]
    files: tuple[tuple[str, str], ...]
    matrix: npt.NDArray[np.float32]

    @classmethod
    def load(cls, db: sqlite3.Connection, store_id: str) -> StoreVectors:
        # One row per file holding a chunk: a filter may allow any of them.
        rows = db.execute(
            "SELECT c.id, cf.file_id, c.vector FROM chunks c JOIN chunk_files cf "
            "ON cf.chunk_id = c.id WHERE c.store_id = ? ORDER BY c.id",
            (store_id,),
        ).fetchall()
        if not rows:
            return cls(np.zeros(0, np.int64), (), np.zeros((0, 1), np.float32))
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32)
        return cls(ids, tuple((store_id, r[1]) for r in rows), matrix.reshape(len(rows), -1))

    def nearest(
        self,
        vector: npt.NDArray[np.float32],
        limit: int,
        allowed: set[tuple[str, str]] | None = None,
    ) -> list[tuple[int, float, str]]:
        """The ``limit`` closest chunks as (chunk id, cosine, file id), closest first."""
        if not len(self.ids) or self.matrix.shape[1] != vector.shape[0]:
            return []
        scores = self.matrix @ vector
        if allowed is not None:
            mask = np.fromiter(
                (f in allowed for f in self.files), dtype=bool, count=len(self.files)
            )
            scores = np.where(mask, scores, -np.inf)
        # Over-fetch a little: a chunk held by two files has two rows.
        fetch = min(limit * 2, len(scores))
        top = np.argpartition(-scores, fetch - 1)[:fetch]
        top = top[np.argsort(-scores[top])]
        out: dict[int, tuple[int, float, str]] = {}
        for i in top:
            chunk_id = int(self.ids[i])
            if np.isfinite(scores[i]) and chunk_id not in out:
                out[chunk_id] = (chunk_id, float(scores[i]), self.files[i][1])
        return list(out.values())[:limit]
