"""The walk over every string of a request: any JSON body, however nested, comes out whole."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nobusy.guard import Guard, Hit, LexiconSettings, payload
from nobusy.guard.filtering import check_request
from nobusy.guard.pii import Masker

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=30,
)
BODIES = st.dictionaries(st.text(max_size=6), JSON, max_size=5)


@settings(max_examples=60)
@given(BODIES)
def test_rewriting_with_nothing_to_change_keeps_the_body(body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    seen: list[str] = []
    out = payload.copy(body)
    payload.rewrite(out, lambda text: seen.append(text) or text)
    assert out == before and body == before
    # Every string of the body is seen except the values of structural keys.
    text = json.dumps(before)
    assert all(json.dumps(s)[1:-1] in text for s in seen)


@settings(max_examples=60)
@given(BODIES)
def test_a_marked_rewrite_reaches_every_string(body: dict[str, Any]) -> None:
    out = payload.copy(body)
    payload.rewrite(out, lambda text: f"<{text}>")

    def strings(node: Any, key: str | None = None) -> list[str]:
        if isinstance(node, str):
            # The walk reads a value under its key's name as sent: "<model>" was "model".
            sent = key[1:-1] if key and key.startswith("<") and key.endswith(">") else key
            return [] if sent in payload.STRUCTURAL else [node]
        if isinstance(node, list):
            return [s for item in node for s in strings(item, key)]
        if isinstance(node, dict):
            return [k for k in node] + [s for k, v in node.items() for s in strings(v, k)]
        return []

    for value in strings(out):
        assert value.startswith("<") and value.endswith(">")


def test_a_body_nested_as_deep_as_json_allows() -> None:
    node: Any = "13800138000"
    for _ in range(1000):
        node = {"x": [node]}
    out = Masker().mask_request({"model": "m", "deep": node})
    for _ in range(1000):
        out = out["deep"] if "deep" in out else out["x"][0]
    assert out == {"x": ["[[PII_MOBILE_1]]"]}


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Guard:
    path = tmp_path_factory.mktemp("words") / "block.txt"
    path.write_text("forbiddenword\n")
    return Guard([LexiconSettings(path=path, action="block")])


@settings(max_examples=60)
@given(body=BODIES)
def test_check_and_mask_leave_clean_bodies_alone(guard: Guard, body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    assert Masker(["email"]).mask_request(body) == before or "@" in json.dumps(body)
    hits: list[Hit] = []
    check_request(guard, body, hits)
    assert body == before and not hits
