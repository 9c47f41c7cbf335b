"""Expired files are deleted by the knowledge base's sweeper: record, place in stores, bytes."""

from __future__ import annotations

import io
from pathlib import Path

from nobusy.knowledge.base import KnowledgeBase
from nobusy.settings import Settings
from nobusy.store.knowledge import Caller, new_id

ADMIN = Caller(None, admin=True)


def test_expired_files_are_deleted_and_the_others_kept(tmp_path: Path) -> None:
    kb = KnowledgeBase(Settings(data_dir=tmp_path))
    try:
        store = kb.records.create_store(None, "s", "use-multilingual", {}, None)
        ids = {}
        for name, expires_after in (("short", 3600), ("kept", None)):
            file_id = new_id("file-")
            size, digest = kb.blobs.write(file_id, io.BytesIO(b"annual leave: 15 days"))
            kb.records.add_file(file_id, None, f"{name}.txt", "assistants", size, digest,
                                expires_after)  # fmt: skip
            kb.records.attach(store.id, file_id, {}, None)
            ids[name] = file_id

        assert kb.sweep_expired() == 0  # nothing has expired yet
        assert kb.sweep_expired(now=2**40) == 1
        assert kb.records.file(ADMIN, ids["short"]) is None
        assert kb.records.store_file(store.id, ids["short"]) is None
        assert not kb.blobs.path(ids["short"]).exists()
        assert kb.records.file(ADMIN, ids["kept"]) is not None
        assert kb.records.store_file(store.id, ids["kept"]) is not None
        assert kb.blobs.read(ids["kept"]) == b"annual leave: 15 days"
    finally:
        kb.close()
