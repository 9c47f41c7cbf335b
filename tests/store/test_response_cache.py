"""``SqliteCache``: entries shared through ``data_dir/cache.db``, expiring; a second process's
view (a second instance on the same file) sees what the first kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nobusy.store.response_cache import DB_NAME, SqliteCache


def test_kept_entries_are_shared_through_the_file_and_expire(tmp_path: Path) -> None:
    now = [1000.0]

    async def scenario() -> None:
        first = SqliteCache(tmp_path, clock=lambda: now[0])
        second = SqliteCache(tmp_path, clock=lambda: now[0])
        try:
            first.put("k", b"answer", 10)
            for _ in range(200):  # the write goes on the cache's own thread
                if await second.get("k") is not None:
                    break
                await asyncio.sleep(0.01)
            assert await second.get("k") == b"answer"
            assert await second.get("other") is None
            now[0] += 11
            assert await second.get("k") is None
        finally:
            await first.aclose()
            await second.aclose()

    asyncio.run(scenario())
    assert (tmp_path / DB_NAME).stat().st_mode & 0o077 == 0  # private, as every nobusy file
