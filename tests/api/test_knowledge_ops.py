"""The knowledge base seen by monitoring, against a real server: ``/metrics`` counts files
ingested (one completes, one fails), their bytes and searches (the search API and a grounded
answer); ``/readyz`` shows the ingestion workers and the sweeper.

A file's status is recorded before its ingestion is counted, so after polling the status the
test polls ``/metrics`` (briefly) for the count as well.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Process, serve

CONFIG = """
knowledge: {{chunk_size: 300, chunk_overlap: 40, workers: 2}}
upstreams:
  fake: {{kind: openai, base_url: "{url}/v1"}}
models:
  plain: [fake/ok]
"""
POLICY = "# 年假制度\n\n员工每年享有十五天年假，需提前三天申请。\n"


def samples(server: Process) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{server.url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


def wait_for(check: Callable[[], Any], what: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return result


def test_ingestion_and_searches_show_in_metrics_and_readyz(
    tmp_path: Path, fake_upstream: Process
) -> None:
    server = serve(tmp_path, CONFIG.format(url=fake_upstream.url))
    try:
        before = samples(server)
        assert value(before, "nobusy_knowledge_files_ingested_total", outcome="completed") == 0
        assert value(before, "nobusy_knowledge_workers_alive") == 2
        with openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0) as sdk:
            store = sdk.vector_stores.create(name="ops")
            good = sdk.files.create(
                file=("leave.md", io.BytesIO(POLICY.encode())), purpose="assistants"
            )
            bad = sdk.files.create(
                file=("setup.exe", io.BytesIO(b"MZ\x90\x00")), purpose="assistants"
            )
            for file in (good, bad):
                sdk.vector_stores.files.create(vector_store_id=store.id, file_id=file.id)

            def ended() -> dict[str, str] | None:
                placed = {
                    f.id: f.status for f in sdk.vector_stores.files.list(vector_store_id=store.id)
                }
                return None if "in_progress" in placed.values() else placed

            assert wait_for(ended, "ingestion stuck in progress") == {
                good.id: "completed",
                bad.id: "failed",
            }
            sdk.vector_stores.search(vector_store_id=store.id, query="年假几天")
            answer = sdk.chat.completions.create(
                model="plain",
                messages=[{"role": "user", "content": "年假有几天？"}],
                extra_headers={"x-nobusy-knowledge": store.id},
            )
            assert answer.choices[0].message.content

        def counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            found = samples(server)
            done = value(found, "nobusy_knowledge_files_ingested_total", outcome="completed")
            failed = value(found, "nobusy_knowledge_files_ingested_total", outcome="failed")
            idle = value(found, "nobusy_knowledge_files_ingesting") == 0
            return found if (done, failed, idle) == (1, 1, True) else None

        found = wait_for(counted, "ingestion not counted", 10)
        assert value(found, "nobusy_knowledge_files_ingested_total", outcome="cancelled") == 0
        assert value(found, "nobusy_knowledge_files_failed_total", code="unsupported_file") == 1
        assert value(found, "nobusy_knowledge_ingested_bytes_total") == len(POLICY.encode())
        assert value(found, "nobusy_knowledge_ingested_chunks_total") >= 1
        assert value(found, "nobusy_knowledge_ingest_seconds_count", outcome="completed") == 1
        assert value(found, "nobusy_knowledge_ingest_stage_seconds_total", stage="embed") > 0
        for source in ("api", "grounding"):
            assert value(found, "nobusy_knowledge_searches_total", source=source, outcome="ok") == 1
            assert value(found, "nobusy_knowledge_search_seconds_count", source=source) == 1
        assert value(found, "nobusy_knowledge_files_waiting") == 0
        assert value(found, "nobusy_knowledge_workers_configured") == 2
        assert value(found, "nobusy_knowledge_sweeper_alive") == 1
        assert not any(store.id in name or good.id in name for name, _ in found)
        assert not any(store.id in v or good.id in v for _, labels in found for _, v in labels)

        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200
        assert ready.json()["knowledge"] == {
            "workers_alive": 2,
            "workers_configured": 2,
            "waiting": 0,
            "ingesting": 0,
            "sweeper_alive": True,
            "ok": True,
        }
        assert "degraded" not in ready.json()
    finally:
        server.stop()
