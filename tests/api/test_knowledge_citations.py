"""Cited answers in the other protocols: Anthropic Messages and OpenAI Responses carry
``nobusy.citations`` as the chat API does, where their SDKs keep it and ignore it.

A whole answer has it at the top level of its body; a stream in its own final event: the
``message_delta`` of a Messages stream, the ``response`` of ``response.completed``. The SDKs'
stream helpers still build their final message or response from such a stream.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai

from tests.api.test_knowledge_answers import grounded
from tests.conftest import Process

__all__ = ["grounded"]  # the module-scoped fixture: a store, a fake upstream, a server

Grounded = tuple[Process, Process, str]


def claude(process: Process) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=process.url, api_key="-", max_retries=0)


def gpt(process: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{process.url}/v1", api_key="-", max_retries=0)


def check(cited: Any, index: int, file_id: str) -> None:
    assert cited["cited"] == [index] and not cited["uncited"] and cited["invalid"] == []
    assert any(c["file_id"] == file_id and c["cited"] for c in cited["citations"])


def test_messages_whole_answer(grounded: Grounded) -> None:
    process, _, file_id = grounded
    with claude(process) as client:
        message = client.messages.create(
            model="hr-bot",
            max_tokens=200,
            messages=[{"role": "user", "content": "年假有几天？[1]"}],
        )
        plain = client.messages.create(
            model="plain", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].type == "text" and "[1]" in message.content[0].text
    assert message.model_extra is not None
    check(message.model_extra["nobusy"], 1, file_id)
    assert "nobusy" not in (plain.model_extra or {})


def test_messages_stream(grounded: Grounded) -> None:
    process, _, file_id = grounded
    with claude(process) as client:
        events = list(
            client.messages.create(
                model="hr-bot",
                max_tokens=200,
                stream=True,
                messages=[{"role": "user", "content": "年假怎么申请？[2]"}],
            )
        )
        with client.messages.stream(
            model="hr-bot",
            max_tokens=200,
            messages=[{"role": "user", "content": "年假怎么申请？[1]"}],
        ) as stream:
            final = stream.get_final_message()
    assert [e.type for e in events][-2:] == ["message_delta", "message_stop"]
    extras = [e.model_extra["nobusy"] for e in events if (e.model_extra or {}).get("nobusy")]
    assert len(extras) == 1 and events[-2].model_extra is not None
    check(extras[0], 2, file_id)
    assert final.stop_reason == "end_turn" and "[1]" in final.content[0].text  # type: ignore[union-attr]


def test_responses_whole_answer(grounded: Grounded) -> None:
    process, _, file_id = grounded
    with gpt(process) as client:
        response = client.responses.create(model="hr-bot", input="年假有几天？[1]")
    assert "[1]" in response.output_text and response.model_extra is not None
    check(response.model_extra["nobusy"], 1, file_id)


def test_responses_stream(grounded: Grounded) -> None:
    process, _, file_id = grounded
    with gpt(process) as client:
        events = list(
            client.responses.create(model="hr-bot", input="年假怎么申请？[2]", stream=True)
        )
        with client.responses.stream(model="hr-bot", input="年假怎么申请？[1]") as stream:
            final = stream.get_final_response()
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1 and events[-1] is completed[0]
    extra = completed[0].response.model_extra
    assert extra is not None
    check(extra["nobusy"], 2, file_id)
    assert "[1]" in final.output_text
    assert final.model_extra is not None
    check(final.model_extra["nobusy"], 1, file_id)
