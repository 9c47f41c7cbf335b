"""The kept responses of the Responses API: per key, expiring, deleted."""

from __future__ import annotations

from pathlib import Path

from nobusy.store.responses import ResponseStore


def test_kept_per_key_until_they_expire(tmp_path: Path) -> None:
    now = [1000.0]
    store = ResponseStore(tmp_path, ttl=60, clock=lambda: now[0])
    try:
        items = [{"role": "user", "content": "hi"}]
        store.put("resp_1", "k1", items, {"id": "resp_1"})
        store.put("resp_2", None, items, {"id": "resp_2"})  # a service without keys
        assert store.items("resp_1", "k1") == items
        assert store.response("resp_1", "k1") == {"id": "resp_1"}
        assert store.items("resp_1", "k2") is None and store.items("resp_1", None) is None
        assert store.items("resp_2", None) == items and store.items("resp_2", "k1") is None
        assert not store.delete("resp_1", "k2")
        assert store.delete("resp_1", "k1") and store.items("resp_1", "k1") is None
        now[0] += 61
        assert store.items("resp_2", None) is None  # expired
        store.put("resp_3", None, items, {"id": "resp_3"})  # and pruned by the next write
        count = store._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert count == 1
    finally:
        store.close()


def test_a_ttl_of_zero_keeps_nothing(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path, ttl=0)
    try:
        store.put("resp_1", None, [], {"id": "resp_1"})
        assert store.response("resp_1", None) is None
    finally:
        store.close()
