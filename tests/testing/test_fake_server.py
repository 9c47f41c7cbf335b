"""The fake local servers: their /metrics parse with the mapping table; the prefix cache hits."""

from __future__ import annotations

import httpx
import pytest

from nobusy.testing.fake_server import SERVERS, FakeServer
from nobusy.testing.fake_upstream import FakeOptions, create_fake_app
from nobusy.upstreams.server_metrics import parse_metrics

LONG = "You are a careful assistant. " * 40  # ≈ 1,200 characters: about 18 blocks


def _client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://fake")


def _chat(question: str) -> dict[str, object]:
    messages = [{"role": "system", "content": LONG}, {"role": "user", "content": question}]
    return {"model": "fake-model", "messages": messages}


@pytest.mark.parametrize("server", SERVERS)
async def test_metrics_parse_with_the_mapping_table(server: str) -> None:
    app = create_fake_app(FakeOptions(server=server, prefill_per_token=0))
    assert isinstance(app, FakeServer)
    async with _client(app) as client:
        await client.post("/v1/chat/completions", json=_chat("one"))
        text = (await client.get("/metrics")).text
        models = (await client.get("/v1/models")).json()["data"]
    reading = parse_metrics(server, text, ("fake-model",))
    assert reading.running == 0 and reading.waiting == 0
    assert models[0]["id"] == "fake-model"
    if server != "llamacpp":
        assert reading.kv_usage is not None and 0 < reading.kv_usage <= 1


async def test_llamacpp_lists_its_slots() -> None:
    app = create_fake_app(FakeOptions(server="llamacpp", capacity=3))
    async with _client(app) as client:
        slots = (await client.get("/slots")).json()
    assert [s["id"] for s in slots] == [0, 1, 2]


async def test_the_prefix_cache_hits_a_shared_prefix() -> None:
    app = create_fake_app(FakeOptions(server="vllm", prefill_per_token=0))
    assert isinstance(app, FakeServer)
    async with _client(app) as client:
        first = await client.post("/v1/chat/completions", json=_chat("one"))
        assert app.stats()["hit_rate"] == 0
        await client.post("/v1/chat/completions", json=_chat("two"))
        text = (await client.get("/metrics")).text
    assert first.status_code == 200 and "Fake answer to: one" in first.text
    assert app.stats()["hit_rate"] > 0.4  # the system prompt's blocks, the second time
    reading = parse_metrics("vllm", text, ("fake-model",))
    assert reading.cache_hits and reading.cache_queries
    assert reading.cache_hits / reading.cache_queries == pytest.approx(app.stats()["hit_rate"])
