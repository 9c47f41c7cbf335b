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
of them or a function from the call to one.

``nobusy.testing.fake_upstream`` is the same idea over HTTP, for end-to-end tests and failure
drills: ``create_fake_app(FakeOptions(...))`` is an OpenAI-compatible ASGI app that fails on
cue, each request picking its fault by its ``model`` (``drop:drop_after=5``,
``http:status=401``, ``hang``...) or an ``x-fake-mode`` header, and ``nobusy fake-upstream``
serves it. It answers Anthropic's ``POST /v1/messages`` too, with the same faults in that
format (``nobusy.testing.fake_anthropic``), for ``kind: anthropic`` drills. Its answers are
deterministic (``answer_text``), so an answer assembled after a failover compares equal to
the uninterrupted one::

    import uvicorn
    from nobusy.testing import FakeOptions, create_fake_app

    app = create_fake_app(FakeOptions(mode="http503", retry_after=5))
    uvicorn.run(app, port=9101)  # or: nobusy fake-upstream --port 9101 --mode http503
"""

from __future__ import annotations

from nobusy.testing.fake_upstream import FakeOptions, answer_text, create_fake_app
from nobusy.testing.scripted import (
    DEFAULT_ANSWER,
    ScriptedCall,
    ScriptedUpstream,
    ScriptExhausted,
    Settings,
    pieces,
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
    "FakeOptions",
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
    "answer_text",
    "create_fake_app",
    "pieces",
]
