"""LangChain's `ChatAnthropic` with `base_url` pointed at nobusy: invoke, stream and a
tool-bound call, answered by the fake upstream through the Messages API (failover included)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessageChunk, HumanMessage

from nobusy.testing.fake_upstream import answer_text
from tests.conftest import Process

QUESTION = "Are you there?"
EXPECTED = answer_text([{"role": "user", "content": QUESTION}])


@pytest.fixture()
def model(gateway: Process, base_url: str) -> Iterator[Any]:
    def make(alias: str) -> ChatAnthropic:
        return ChatAnthropic(
            model=alias, base_url=gateway.url, api_key="unused", max_retries=0, max_tokens=100
        )

    yield make


@pytest.mark.parametrize("alias", ["ok", "fault-http503", "fault-drop5"])
def test_invoke(model: Any, alias: str) -> None:
    answer = model(alias).invoke([HumanMessage(QUESTION)])
    assert answer.content == EXPECTED
    assert answer.response_metadata["stop_reason"] == "end_turn"
    assert answer.usage_metadata["output_tokens"] >= 12


@pytest.mark.parametrize("alias", ["ok", "fault-drop5"])
def test_stream(model: Any, alias: str) -> None:
    chunks = list(model(alias).stream([HumanMessage(QUESTION)]))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert whole.text == EXPECTED
    assert len(chunks) > 2  # token by token, not one block


def search(query: str) -> str:
    """Search the web for the query."""
    return query


def test_tool_bound_call(model: Any) -> None:
    answer = model("tools").bind_tools([search]).invoke([HumanMessage(QUESTION)])
    assert len(answer.tool_calls) == 1
    call = answer.tool_calls[0]
    assert call["name"] == "search"
    assert call["args"] == {"query": QUESTION}
    assert answer.response_metadata["stop_reason"] == "tool_use"
