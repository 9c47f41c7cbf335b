"""Ingestion with `--workers 2`: each file in progress is taken up by one worker, once.

Files are left ``in_progress`` in a data directory as a crash leaves them (one of them still
claimed by a process that is gone), then a two-process server resumes them; and files put in a
store through that server are ingested once too. The ``claims`` column counts how often a
worker took each file up.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openai

from nobusy.knowledge.claims import LEASE_SECONDS, Claim, worker_id
from nobusy.store.blobs import Blobs
from nobusy.store.knowledge import KnowledgeStore, new_id
from tests.conftest import serve

ADMIN = "admin-key-for-the-worker-tests"
CONFIG = f"""
admin_key: {ADMIN}
knowledge: {{chunk_size: 300, chunk_overlap: 40}}
upstreams:
  fake: {{kind: openai, base_url: "http://127.0.0.1:9/v1"}}
models:
  ok: [fake/ok]
"""


def document(n: int) -> bytes:
    return "\n\n".join(
        f"## 第{n}章第{k}节\n\n第{k}条：员工报销第{n}类费用需附发票，{n * 10 + k}天内提交。"
        for k in range(3)
    ).encode()


def _last_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_claim_is_void_when_unclaimed_stale_or_dead() -> None:
    me = worker_id()
    host = me.partition(":")[0]
    now = 1000.0
    assert Claim(None, None).void(me, now)
    assert Claim(me, now).void(me, now)
    assert not Claim("other-host:1:ab", now).void(me, now)
    assert Claim("other-host:1:ab", now - LEASE_SECONDS - 1).void(me, now)
    assert Claim(f"{host}:{_last_pid()}:ab", now).void(me, now)  # its process is gone
    assert not Claim(f"{host}:1:ab", now).void(me, now)  # pid 1 runs


def test_claim_is_a_compare_and_set(tmp_path: Path) -> None:
    records = KnowledgeStore(tmp_path)
    try:
        store = records.create_store(None, "s", "use-multilingual", {}, None)
        records.add_file("file-1", None, "a.md", "assistants", 1, "x")
        records.attach(store.id, "file-1", {}, None)
        first, second = worker_id(), worker_id()
        assert records.claim(store.id, "file-1", first)
        assert not records.claim(store.id, "file-1", second)
        assert records.claimable(second) == []
        assert records.claimable(first) == [(store.id, "file-1")]
        records.release(first)
        assert records.claim(store.id, "file-1", second)
        assert records.claims(store.id, "file-1") == 2
    finally:
        records.close()


def test_two_workers_ingest_each_file_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    records = KnowledgeStore(data)
    blobs = Blobs(data / "files")
    try:
        store = records.create_store(None, "left", "use-multilingual", {}, None)
        left = [new_id("file-") for _ in range(4)]
        for n, file_id in enumerate(left):
            size, digest = blobs.write(file_id, io.BytesIO(document(n)))
            records.add_file(file_id, None, f"rules{n}.md", "assistants", size, digest)
            records.attach(store.id, file_id, {}, None)
        # One was being ingested by a process that was killed a moment ago.
        gone = f"{worker_id().partition(':')[0]}:{_last_pid()}:dead"
        assert records.claim(store.id, left[0], gone)
    finally:
        records.close()
    process = serve(tmp_path, CONFIG, "--workers", "2")
    try:
        with openai.OpenAI(base_url=f"{process.url}/v1", api_key=ADMIN, max_retries=2) as sdk:
            fresh = [
                sdk.files.create(
                    file=(f"new{n}.md", io.BytesIO(document(10 + n))), purpose="assistants"
                )
                for n in range(2)
            ]
            batch = sdk.vector_stores.file_batches.create_and_poll(
                vector_store_id=store.id, file_ids=[f.id for f in fresh], poll_interval_ms=200
            )
            assert batch.status == "completed" and batch.file_counts.completed == 2
            deadline = time.monotonic() + 60
            while sdk.vector_stores.retrieve(store.id).file_counts.in_progress:
                assert time.monotonic() < deadline, "files left in progress"
                time.sleep(0.2)
            counts = sdk.vector_stores.retrieve(store.id).file_counts
            assert counts.completed == 6 and counts.failed == 0
            chunks = sdk.vector_stores.retrieve(store.id).model_extra["nobusy"]["chunks"]
    finally:
        process.stop()
    with sqlite3.connect(data / "nobusy.db") as db:
        rows = db.execute("SELECT file_id, claims, chunks FROM kb_store_files").fetchall()
    assert len(rows) == 6
    claims = {file_id: n for file_id, n, _ in rows}
    # The file claimed by the killed process: its claim, then one worker's. Every other: once.
    assert claims.pop(left[0]) == 2
    assert set(claims.values()) == {1}, claims
    assert chunks == sum(n for _, _, n in rows)  # no chunk indexed twice
