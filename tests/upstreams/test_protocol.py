"""Every upstream kind has every member of the protocol the router and the app use."""

from __future__ import annotations

from typing import Any

import pytest

from nobusy.testing import ScriptedUpstream
from nobusy.upstreams import KINDS, build_upstream, settings_class
from nobusy.upstreams.base import Upstream

OPTIONS: dict[str, dict[str, Any]] = {
    "openai": {"base_url": "http://127.0.0.1:1/v1"},
    "anthropic": {"base_url": "http://127.0.0.1:1"},
    "vllm": {"base_url": "http://127.0.0.1:1/v1"},
    "sglang": {"base_url": "http://127.0.0.1:1/v1"},
    "llamacpp": {"base_url": "http://127.0.0.1:1/v1"},
}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_every_kind_implements_the_upstream_protocol(kind: str) -> None:
    settings = settings_class(kind).model_validate({"kind": kind, **OPTIONS.get(kind, {})})
    upstream = build_upstream("u", settings)  # builds only: nothing connects or loads yet
    try:
        assert isinstance(upstream, Upstream)
        assert upstream.settings is settings
    finally:
        await upstream.aclose()


def test_the_scripted_upstream_implements_it_too() -> None:
    assert isinstance(ScriptedUpstream("a"), Upstream)
