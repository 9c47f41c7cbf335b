"""``KnowledgeBase.health``: its workers and sweeper, read from memory for ``/readyz``."""

from __future__ import annotations

from pathlib import Path

from nobusy.knowledge.base import KnowledgeBase
from nobusy.settings import Settings


def test_health_is_ok_only_while_every_thread_lives(tmp_path: Path) -> None:
    kb = KnowledgeBase(Settings(data_dir=tmp_path, knowledge={"workers": 2}))
    try:
        assert not kb.health().ok  # not started: nothing ingests
        kb.start()
        health = kb.health()
        assert health.ok and health.json() == {
            "workers_alive": 2,
            "workers_configured": 2,
            "waiting": 0,
            "ingesting": 0,
            "sweeper_alive": True,
            "ok": True,
        }
    finally:
        kb.close()
    stopped = kb.health()
    assert (stopped.workers_alive, stopped.sweeper_alive, stopped.ok) == (0, False, False)
