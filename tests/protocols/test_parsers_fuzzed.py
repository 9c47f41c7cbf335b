"""The protocol parsers fuzzed in-process: any body is a request or a NobusyError, never a
crash (which would be a 500 with nothing said about what to fix)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from nobusy.errors import NobusyError
from nobusy.protocols.anthropic_messages import count_tokens, parse_messages_request
from nobusy.protocols.openai_responses import parse_responses_request

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


def near(keys: list[str], values: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies made of the protocol's own field names and block shapes, mixed with noise."""
    shaped = st.sampled_from(list(values.values())) | json_values
    return st.dictionaries(st.sampled_from(keys), shaped, max_size=len(keys))


def shaped_like(example: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects of ``example``'s type with its other keys, each value its own or noise."""
    kept = {k: st.just(v) for k, v in example.items() if k in ("type", "role")}
    return st.fixed_dictionaries(
        kept,
        optional={k: json_values | st.just(v) for k, v in example.items() if k not in kept},
    )


BLOCKS = [
    {
        "type": t,
        "text": "x",
        "id": "i",
        "name": "n",
        "input": {},
        "tool_use_id": "i",
        "content": "c",
        "source": {"type": "base64", "media_type": "image/png", "data": "AA"},
        "thinking": "t",
    }
    for t in ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking", "x")
]
MESSAGES_FIELDS = {
    "model": "ok",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": BLOCKS}, {"role": "assistant", "content": BLOCKS}],
    "system": [{"type": "text", "text": "s"}],
    "tools": [{"name": "f", "input_schema": {}}],
    "tool_choice": {"type": "tool", "name": "f"},
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "stream": True,
    "stop_sequences": ["x"],
    "temperature": 0.5,
    "metadata": {"user_id": "u"},
}
ITEMS = [
    {"role": "user", "content": [{"type": "input_text", "text": "x"}]},
    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    {
        "type": "function_call_output",
        "call_id": "c",
        "output": [{"type": "input_text", "text": "o"}],
    },
    {"type": "reasoning"},
    {"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]},
]
RESPONSES_FIELDS = {
    "model": "ok",
    "input": ITEMS,
    "instructions": "i",
    "tools": [{"type": "function", "name": "f"}],
    "tool_choice": {"type": "function", "name": "f"},
    "text": {"format": {"type": "json_schema", "name": "n", "schema": {}}},
    "reasoning": {"effort": "low"},
    "stream": True,
    "max_output_tokens": 5,
}


def settles(parse: Any, body: Any) -> None:
    try:
        parse(orjson.dumps(body))
    except NobusyError:
        pass


@settings(max_examples=400, deadline=None)
@given(body=json_values | near(list(MESSAGES_FIELDS), MESSAGES_FIELDS))
def test_messages_bodies(body: Any) -> None:
    settles(parse_messages_request, body)
    settles(count_tokens, body)


@settings(max_examples=600, deadline=None)
@given(
    blocks=st.lists(st.sampled_from(BLOCKS).flatmap(shaped_like), min_size=1, max_size=3),
    role=st.sampled_from(["user", "assistant"]),
)
def test_messages_blocks(blocks: list[Any], role: str) -> None:
    body = {"model": "ok", "max_tokens": 5, "messages": [{"role": role, "content": blocks}]}
    settles(parse_messages_request, body)
    for field in ("tools", "system", "tool_choice", "thinking"):
        settles(
            parse_messages_request, {**body, field: blocks if field != "tool_choice" else blocks[0]}
        )


@settings(max_examples=400, deadline=None)
@given(body=json_values | near(list(RESPONSES_FIELDS), RESPONSES_FIELDS))
def test_responses_bodies(body: Any) -> None:
    settles(parse_responses_request, body)


@settings(max_examples=600, deadline=None)
@given(items=st.lists(st.sampled_from(ITEMS).flatmap(shaped_like), min_size=1, max_size=3))
def test_responses_items(items: list[Any]) -> None:
    body = {"model": "ok", "input": items}
    settles(parse_responses_request, body)
    for field in ("tools", "tool_choice", "text", "reasoning"):
        settles(parse_responses_request, {**body, field: items if field == "tools" else items[0]})
