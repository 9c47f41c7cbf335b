"""The Ingestor in-process, with a counting embedder: a file of several index groups, the
same file again (nothing embedded twice), a stop mid-file taken up where it stopped, and
attributes changed while a file is ingested."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from nobusy.knowledge.index import Index
from nobusy.knowledge.jobs import EMBED_BATCH, INDEX_GROUP, Ingestor
from nobusy.knowledge.settings import KnowledgeSettings
from nobusy.store.blobs import Blobs
from nobusy.store.knowledge import KnowledgeStore, new_id

SETTINGS = KnowledgeSettings(chunk_size=60, chunk_overlap=0)
# ~330 chunks: more than two index groups.
TEXT = "\n\n".join(f"第{n}条：员工第{n}类费用的报销需在{n}天内提交发票。" for n in range(400))


class Counting:
    """Vectors from a hash of the text; remembers every text it embedded."""

    name = "use-multilingual"
    dimensions = 8

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.on_call: Any = None

    def embed(self, texts: Sequence[str], *, query: bool) -> npt.NDArray[np.float32]:
        if self.on_call is not None:
            self.on_call(len(self.seen))
        self.seen.extend(texts)
        rows = [
            np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], dtype=np.uint8) + 1.0
            for t in texts
        ]
        out = np.array(rows, dtype=np.float32).reshape(len(texts), self.dimensions)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class Base:
    def __init__(self, tmp: Path) -> None:
        self.records = KnowledgeStore(tmp)
        self.blobs = Blobs(tmp / "files")
        self.index = Index(tmp / "knowledge.db", "use-multilingual")
        self.embedder = Counting()
        self.store = self.records.create_store(None, "s", "use-multilingual", {}, None)

    def ingestor(self) -> Ingestor:
        return Ingestor(
            self.records, self.blobs, SETTINGS, lambda model: (self.embedder, self.index)
        )

    def put(self, text: str, attributes: dict[str, Any] | None = None) -> str:
        file_id = new_id("file-")
        size, digest = self.blobs.write(file_id, io.BytesIO(text.encode()))
        self.records.add_file(file_id, None, "rules.md", "assistants", size, digest)
        self.records.attach(self.store.id, file_id, attributes or {}, None)
        return file_id

    def status(self, file_id: str) -> str:
        placed = self.records.store_file(self.store.id, file_id)
        assert placed is not None
        return placed.status


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Base]:
    kb = Base(tmp_path)
    yield kb
    kb.index.close()
    kb.records.close()


def test_a_file_of_several_groups_and_the_same_file_again(base: Base) -> None:
    first = base.put(TEXT)
    ingestor = base.ingestor()
    ingestor.ingest(base.store.id, first)
    chunks = base.index.count(base.store.id)
    assert base.status(first) == "completed" and chunks > 2 * INDEX_GROUP
    assert len(base.embedder.seen) == len(set(base.embedder.seen)) == chunks
    again = base.put(TEXT)
    ingestor.ingest(base.store.id, again)
    assert base.status(again) == "completed"
    assert len(base.embedder.seen) == chunks  # every chunk known: nothing embedded
    assert base.index.count(base.store.id) == chunks
    hits = base.index.search([base.store.id], "第7类费用", None, k=3, mode="bm25")
    assert hits and "第7类费用" in hits[0].text


def test_a_stop_mid_file_is_taken_up_where_it_stopped(base: Base) -> None:
    file_id = base.put(TEXT)
    stopped = base.ingestor()

    def stop_after_two_groups(embedded: int) -> None:
        if embedded >= 2 * INDEX_GROUP:
            stopped._stopping.set()

    base.embedder.on_call = stop_after_two_groups
    stopped.ingest(base.store.id, file_id)
    assert base.status(file_id) == "in_progress"
    partial = base.index.count(base.store.id)
    assert 0 < partial < len(base.embedder.seen) + EMBED_BATCH
    stopped.close()
    base.embedder.on_call = None
    before = len(base.embedder.seen)
    base.ingestor().ingest(base.store.id, file_id)
    assert base.status(file_id) == "completed"
    total = base.index.count(base.store.id)
    assert len(base.embedder.seen) - before == total - partial  # only the rest was embedded


def test_attributes_changed_while_ingesting_win(base: Base) -> None:
    file_id = base.put(TEXT, {"lang": "zh"})

    def change(embedded: int) -> None:
        if embedded == 0:
            base.records.set_attributes(base.store.id, file_id, {"lang": "en"})

    base.embedder.on_call = change
    base.ingestor().ingest(base.store.id, file_id)
    en = {"type": "eq", "key": "lang", "value": "en"}
    assert base.index.search([base.store.id], "报销", None, k=3, mode="bm25", filters=en)
    zh = {"type": "eq", "key": "lang", "value": "zh"}
    assert not base.index.search([base.store.id], "报销", None, k=3, mode="bm25", filters=zh)


def test_each_file_ended_is_counted_once_by_how_it_ended(base: Base) -> None:
    ingestor = base.ingestor()
    good = base.put(TEXT)
    ingestor.ingest(base.store.id, good)
    ingestor.ingest(base.store.id, good)  # completed already: not this worker's to count
    ingestor.ingest(base.store.id, base.put(""))  # empty: failed, invalid_file
    gone = base.put("另一份文件：年假十五天。")
    base.embedder.on_call = lambda _: base.records.detach(base.store.id, gone)
    ingestor.ingest(base.store.id, gone)  # left its store while embedded: cancelled
    now = ingestor.stats.snapshot()
    assert now.files == {"completed": 1, "failed": 1, "cancelled": 1}
    assert now.failures == {"invalid_file": 1, "unsupported_file": 0, "server_error": 0}
    assert now.bytes == len(TEXT.encode())
    assert now.chunks == base.index.count(base.store.id) > 2 * INDEX_GROUP
    assert [sum(t.counts) for t in now.ingest_seconds.values()] == [1, 1, 1]
    assert all(seconds > 0 for seconds in now.stage_seconds.values()), now.stage_seconds


def test_health_counts_the_workers_alive(base: Base) -> None:
    ingestor = Ingestor(
        base.records,
        base.blobs,
        SETTINGS,
        lambda model: (base.embedder, base.index),
        workers=2,
    )
    assert ingestor.start() == 0
    try:
        health = ingestor.health()
        assert (health.alive, health.configured, health.waiting, health.ingesting) == (2, 2, 0, 0)
    finally:
        ingestor.close()
    assert ingestor.health().alive == 0
