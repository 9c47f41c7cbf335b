"""The knowledge base's records and bytes in PostgreSQL: claims under row locks, visibility
with and without keys, files in parts, and a server without pgvector named at start."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import psycopg
import pytest

from nobusy.errors import ConfigError
from nobusy.knowledge.claims import worker_id
from nobusy.store.knowledge import Caller, new_id
from nobusy.store.pg_knowledge import PART_BYTES, PgBlobs, PgKnowledgeStore
from nobusy.store.pg_migrations import _PGVECTOR
from nobusy.store.postgres import startup_error


@pytest.fixture()
def records(pg_url: str) -> Iterator[PgKnowledgeStore]:
    records = PgKnowledgeStore(pg_url)
    yield records
    records.close()


def test_a_claim_is_taken_once(records: PgKnowledgeStore) -> None:
    store = records.create_store(None, "s", "use-multilingual", {}, None)
    records.add_file("file-1", None, "a.md", "assistants", 1, "x")
    records.attach(store.id, "file-1", {}, None)
    first, second = worker_id(), worker_id()
    assert records.claim(store.id, "file-1", first)
    assert not records.claim(store.id, "file-1", second)
    assert records.claimable(second) == [] and records.claimable(first) == [(store.id, "file-1")]
    records.release(first)
    assert records.claim(store.id, "file-1", second)
    assert records.claims(store.id, "file-1") == 2
    # Attached again: in progress, unclaimed, as SQLite's INSERT OR REPLACE leaves it.
    records.finish(store.id, "file-1", "completed", chunks=3)
    placed = records.attach(store.id, "file-1", {"a": 1}, None)
    assert placed.status == "in_progress" and placed.chunks == 0 and placed.attributes == {"a": 1}
    assert records.pending() == [(store.id, "file-1")]


def test_of_many_replicas_claiming_at_once_one_wins(pg_url: str) -> None:
    stores = [PgKnowledgeStore(pg_url) for _ in range(6)]
    store = stores[0].create_store(None, "s", "use-multilingual", {}, None)
    stores[0].add_file("file-2", None, "a.md", "assistants", 1, "x")
    stores[0].attach(store.id, "file-2", {}, None)
    won: list[bool] = []
    start = threading.Barrier(len(stores))

    def claim(records: PgKnowledgeStore) -> None:
        start.wait()
        won.append(records.claim(store.id, "file-2", worker_id()))

    threads = [threading.Thread(target=claim, args=(r,)) for r in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * 5 + [True]
    assert stores[0].claims(store.id, "file-2") == 1
    for records in stores:
        records.close()


def test_who_sees_what(records: PgKnowledgeStore) -> None:
    records.add_file("file-a", "key-a", "a.md", "assistants", 1, "x")
    records.add_file("file-n", None, "n.md", "assistants", 1, "x")
    assert records.file(Caller(None), "file-n") is not None  # no keys: the keyless files
    assert records.file(Caller(None), "file-a") is None
    assert records.file(Caller("key-a"), "file-a") is not None
    assert records.file(Caller("key-b"), "file-a") is None
    assert records.file(Caller(None, admin=True), "file-a") is not None
    mine = records.create_store("key-a", "mine", "use-multilingual", {"k": "v"}, None)
    records.grant("key-b", [mine.id])
    assert records.store(Caller("key-b"), mine.id) is not None
    assert records.store(Caller("key-c"), mine.id) is None
    assert [s.id for s in records.stores(Caller("key-a")).data] == [mine.id]
    assert records.counts(mine.id)["total"] == 0


def test_files_are_kept_in_parts(pg_url: str) -> None:
    blobs, other = PgBlobs(pg_url), PgBlobs(pg_url)
    data = bytes(range(256)) * (PART_BYTES // 256 * 2 + 3)  # two parts and a bit
    file_id, empty = new_id("file-"), new_id("file-")
    assert blobs.write(file_id, io.BytesIO(data))[0] == len(data)
    assert blobs.write(empty, io.BytesIO(b""))[0] == 0
    assert other.read(file_id) == data and other.read(empty) == b""  # another replica reads it
    other.delete(file_id)
    with pytest.raises(FileNotFoundError):
        blobs.read(file_id)
    with pytest.raises(ValueError):
        blobs.read("../etc/passwd")
    blobs.close()
    other.close()


def test_a_server_without_pgvector_is_named_at_start(pg_url: str) -> None:
    # The migration's check, for an extension this server lacks as it might lack pgvector.
    lacking = _PGVECTOR.replace("'vector'", "'no_such_extension'")
    with psycopg.connect(pg_url, autocommit=True) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute(lacking.encode())
    error = startup_error(caught.value, pg_url, migrating=True)
    assert isinstance(error, ConfigError)
    assert "pgvector extension is not installed" in error.message
    assert "lacks what nobusy needs" in error.message and "pg-test-secret" not in error.message
