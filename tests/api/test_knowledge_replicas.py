"""The knowledge base in PostgreSQL (`store`): replicas share one base.

Two gateways with data directories of their own on one database: a file uploaded through one
is read, ingested and searched through the other with the official SDK; a gateway killed
mid-ingestion leaves the file to the next one that starts. Then the Files and Vector Stores
API's own tests (``test_knowledge``) run again against a gateway on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.api import test_knowledge as sqlite_tests
from tests.api.test_knowledge import ADMIN, CONFIG, LEAVE, client, nobusy, upload
from tests.conftest import Process, serve
from tests.postgres_server import PostgresServer

# The API's tests that take the module's gateway run here against a gateway on PostgreSQL
# (the ``server`` fixture below). Those that read nobusy.db or start their own are SQLite's;
# the kill is tested below, against PostgreSQL.
_SQLITE_ONLY = {"test_cli_grants_stores", "test_resumes_after_a_kill"}
globals().update(
    {
        name: value
        for name, value in vars(sqlite_tests).items()
        if (name.startswith("test_") and name not in _SQLITE_ONLY)
        or name in ("keys", "alice", "bob", "admin", "hr_store")
    }
)


@pytest.fixture(scope="module")
def server(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    url = postgres_server.new_database("kb_api")
    process = serve(tmp_path_factory.mktemp("kb-pg"), CONFIG, env={"NOBUSY_STORE": url})
    yield process
    process.stop()


@pytest.fixture(scope="module")
def fleet(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Process]]:
    url = postgres_server.new_database("kb_replicas")
    tmp: Path = tmp_path_factory.mktemp("kb-replicas")
    started: list[Process] = []
    try:
        for name in ("r1", "r2"):
            (tmp / name).mkdir()
            env = {"NOBUSY_STORE": url, "NOBUSY_REPLICA_ID": name}
            started.append(serve(tmp / name, CONFIG, env=env))
        yield started
    finally:
        for process in started:
            process.stop()


def test_a_file_uploaded_to_one_replica_is_searched_on_the_other(fleet: list[Process]) -> None:
    with client(fleet[0], ADMIN) as first, client(fleet[1], ADMIN) as second:
        document = upload(first, "leave.md", LEAVE)
        store = first.vector_stores.create(name="shared")
        first.vector_stores.files.create(
            vector_store_id=store.id, file_id=document.id, attributes={"team": "hr"}
        )
        # The other replica has the file's bytes, the store, and (whoever ingested it) its chunks.
        assert second.files.content(document.id).text == LEAVE
        placed = second.vector_stores.files.poll(
            file_id=document.id, vector_store_id=store.id, poll_interval_ms=200
        )
        assert placed.status == "completed", placed.last_error
        for sdk in (second, first):
            # A two-character Chinese word finds its passage first, on either replica.
            page = sdk.vector_stores.search(vector_store_id=store.id, query="报销")
            assert page.data[0].filename == "leave.md"
            assert "发票" in page.data[0].content[0].text
            assert page.data[0].attributes == {"team": "hr"}
        filtered = second.vector_stores.search(
            vector_store_id=store.id,
            query="年假",
            filters={"type": "eq", "key": "team", "value": "finance"},
        )
        assert filtered.data == []
        # Deleted through one replica, gone for the other.
        first.vector_stores.delete(store.id)
        assert store.id not in [s.id for s in second.vector_stores.list()]


def test_ingestion_resumes_on_another_gateway_after_a_kill(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.new_database("kb_resume")
    env = {"NOBUSY_STORE": url}
    text = "\n\n".join(
        f"## 第{n}节\n\n第{n}条规定：员工报销第{n}类费用需附发票。" for n in range(4)
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    killed = serve(tmp_path / "a", CONFIG, env=env)
    try:
        with client(killed, ADMIN) as sdk:
            document = upload(sdk, "rules.md", text)
            store = sdk.vector_stores.create(name="resume")
            sdk.vector_stores.files.create(vector_store_id=store.id, file_id=document.id)
        os.kill(killed.proc.pid, signal.SIGKILL)
        killed.proc.wait()
    finally:
        killed.stop()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT status, claims FROM kb_store_files").fetchone()
    assert row is not None and row[0] == "in_progress"  # killed before it was embedded
    other = serve(tmp_path / "b", CONFIG, env=env)
    try:
        with client(other, ADMIN) as sdk:
            placed = sdk.vector_stores.files.poll(
                file_id=document.id, vector_store_id=store.id, poll_interval_ms=200
            )
            assert placed.status == "completed", placed.last_error
            chunks = nobusy(sdk.vector_stores.retrieve(store.id))["chunks"]
            assert chunks == nobusy(placed)["chunks"] > 1
            page = sdk.vector_stores.search(
                vector_store_id=store.id, query="报销", max_num_results=50
            )
            texts = [hit.content[0].text for hit in page.data]
            assert len(texts) == len(set(texts)) == chunks
    finally:
        other.stop()
