"""Test doubles for nobusy and its plugins: upstreams that fail on cue, in-process.

``ScriptedUpstream`` implements the upstream protocol (``nobusy.upstreams.base.Upstream``)
and plays one scripted step per call — an answer, a refusal, a hang, a cut, an error event —
raising the same ``nobusy.errors`` the ``openai`` kind raises for that fault on the wire. Give
it to the real ``Router`` and walk a request with a ``Walker`` to test routing, failover,
hedging and continuation without a socket, in milliseconds::

    from nobusy import testing
    from nobusy.metrics import Metrics
    from nobusy.routing import Router, Walker, open_answer
    from nobusy.settings import ModelAlias, Route, Settings
    from nobusy.testing import CutAfter, Refuse, Reply, ScriptedUpstream

    a = ScriptedUpstream("a", [Refuse(503)])
    b = ScriptedUpstream("b", [CutAfter(3)])
    # Asked to continue (DeepSeek-style prefix), c says only the rest of the answer.
    c = ScriptedUpstream("c", [Reply()], settings=testing.Settings(continuation="prefix"))
    ups = {u.name: u for u in (a, b, c)}
    settings = Settings(
        upstreams={name: u.settings for name, u in ups.items()},
        models={"m": ModelAlias(routes=(Route("a"), Route("b", tier=1), Route("c", tier=2)))},
    )
    router = Router(settings, ups, Metrics())
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    walk = Walker(router, "m", body, "req-1")
    assert walk.reserve()  # a slot taken at once (else the walk waits in the queue)
    answer = await open_answer(walk)
    text = "".join(
        [
            chunk["choices"][0]["delta"].get("content") or ""
            async for chunk in answer.chunks
            if chunk.get("choices")
        ]
    )
    assert text == c.answer  # the partial answer from b, then the rest from c
    assert c.calls[0].body["messages"][-1]["role"] == "assistant"  # the continuation

Steps: ``Reply``, ``ToolCall``, ``Slow``, ``Refuse``, ``Unreachable``, ``Hang``,
``KeepAliveOnly``, ``CutAfter``, ``ErrorEvent``, ``Garbage``, ``Raise``; a script is a list
of them or a function from the call to one. The shipped ``nobusy fake-upstream`` is the same
idea over HTTP, for end-to-end tests and failure drills.
"""

from __future__ import annotations

from nobusy.testing.scripted import (
    DEFAULT_ANSWER,
    ScriptedCall,
    ScriptedUpstream,
    ScriptExhausted,
    Settings,
    pieces,
    refusal,
)
from nobusy.testing.steps import (
    CutAfter,
    ErrorEvent,
    Garbage,
    Hang,
    KeepAliveOnly,
    Raise,
    Refuse,
    Reply,
    Script,
    Slow,
    Step,
    ToolCall,
    Unreachable,
)

__all__ = [
    "DEFAULT_ANSWER",
    "CutAfter",
    "ErrorEvent",
    "Garbage",
    "Hang",
    "KeepAliveOnly",
    "Raise",
    "Refuse",
    "Reply",
    "Script",
    "ScriptExhausted",
    "ScriptedCall",
    "ScriptedUpstream",
    "Settings",
    "Slow",
    "Step",
    "ToolCall",
    "Unreachable",
    "pieces",
    "refusal",
]
