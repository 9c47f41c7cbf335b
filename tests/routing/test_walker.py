"""The route walker in-process: the real Router over scripted upstreams, no sockets.

Each fault the openai kind can meet is played before the first token (the next route answers
and the client never knows) and after it (the answer continues on the next route, seamlessly).
Then hedging, tool calls held until complete, the continuation request each mode sends, the
budgets and limits that bound failover, and the walker's requeue when every route said busy.
Every test checks the whole answer, which upstreams were called, and that no slot was left
taken.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from nobusy.errors import (
    AllUpstreamsFailed,
    QueueTimeout,
    RetryBudgetSpent,
    UpstreamAuthFailed,
    UpstreamEjected,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRejectedRequest,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from nobusy.metrics import Metrics
from nobusy.routing import Answer, Router, Walker, open_answer
from nobusy.routing.continuation import CONTINUE_INSTRUCTION, Method
from nobusy.routing.walker import only_busy
from nobusy.settings import HedgeSettings, ModelAlias, Route, Settings
from nobusy.testing import (
    DEFAULT_ANSWER,
    CutAfter,
    ErrorEvent,
    Garbage,
    Hang,
    KeepAliveOnly,
    Refuse,
    Reply,
    ScriptedUpstream,
    Slow,
    Step,
    ToolCall,
    Unreachable,
)
from nobusy.testing import Settings as ScriptedSettings
from nobusy.upstreams.base import Chunk

BODY: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "spell the alphabet"}],
    "max_tokens": 100,
}
FAST = 0.05  # seconds: first-token and idle timeouts, so a hang costs a twentieth of a second

# How a configured, never probed prefix continuation is announced (continuation.Method.how).
UNCHECKED_PREFIX = ": " + Method("prefix").how


def upstream(
    name: str, *steps: Step, continuation: str = "prefix", **opts: Any
) -> ScriptedUpstream:
    settings = ScriptedSettings(
        first_token_timeout=opts.pop("first_token_timeout", FAST),
        idle_timeout=opts.pop("idle_timeout", FAST),
        continuation=continuation,
        **opts.pop("settings", {}),
    )
    return ScriptedUpstream(name, list(steps), settings=settings, **opts)


def router(*ups: ScriptedUpstream, hedge: HedgeSettings | None = None, **overrides: Any) -> Router:
    """A Router whose alias ``m`` tries ``ups`` in the order given (one tier each)."""
    routes = tuple(Route(u.name, tier=i) for i, u in enumerate(ups))
    settings = Settings(
        upstreams={u.name: u.settings for u in ups},
        models={"m": ModelAlias(routes=routes, hedge=hedge)},
        **overrides,
    )
    return Router(settings, {u.name: u for u in ups}, Metrics(), random.Random(0))


@dataclass
class Outcome:
    """What the client received."""

    answer: Answer
    chunks: list[Chunk] = field(default_factory=list)

    def _deltas(self, key: str) -> str:
        return "".join(
            (choice.get("delta") or {}).get(key) or ""
            for chunk in self.chunks
            for choice in chunk.get("choices") or ()
        )

    @property
    def text(self) -> str:
        return self._deltas("content")

    @property
    def reasoning(self) -> str:
        return self._deltas("reasoning_content")

    @property
    def notes(self) -> list[str]:
        return [c["nobusy_note"] for c in self.chunks if "nobusy_note" in c]

    @property
    def finish(self) -> list[str]:
        return [
            choice["finish_reason"]
            for chunk in self.chunks
            for choice in chunk.get("choices") or ()
            if choice.get("finish_reason")
        ]

    @property
    def usage(self) -> dict[str, int]:
        usages = [c["usage"] for c in self.chunks if c.get("usage")]
        assert len(usages) == 1, usages
        return dict(usages[0])

    async def read(self) -> Outcome:
        """Read the answer to its end."""
        async for chunk in self.answer.chunks:
            self.chunks.append(chunk)
        return self

    def tool_calls(self) -> list[dict[str, Any]]:
        calls: dict[int, dict[str, Any]] = {}
        for chunk in self.chunks:
            for choice in chunk.get("choices") or ():
                for delta in (choice.get("delta") or {}).get("tool_calls") or ():
                    call = calls.setdefault(delta["index"], {"id": "", "name": "", "args": ""})
                    call["id"] += delta.get("id") or ""
                    function = delta.get("function") or {}
                    call["name"] += function.get("name") or ""
                    call["args"] += function.get("arguments") or ""
        return [calls[i] for i in sorted(calls)]


def walker(r: Router, body: dict[str, Any] | None = None, **opts: Any) -> Walker:
    """A walk for one request to alias ``m``, holding a slot (the test routers have room)."""
    walk = Walker(r, "m", dict(body or BODY), "req-1", who="key:test", **opts)
    assert walk.reserve(), "the test routers have room"
    return walk


async def ask(r: Router, body: dict[str, Any] | None = None, **opts: Any) -> Outcome:
    """One request through the walker, read to the end, as api/chat.py does it."""
    return await Outcome(await open_answer(walker(r, body, **opts))).read()


def settled(r: Router) -> None:
    """No attempt left in flight, and every slot handed back."""
    for name, stats in r.stats.items():
        assert stats.in_flight == 0, name
        assert r.capacity.limits[name].in_flight == 0, name


def called(*ups: ScriptedUpstream) -> list[int]:
    return [len(u.calls) for u in ups]


# --- before the first token: the next route answers, and nothing shows ------------------------

BEFORE = [
    pytest.param(Refuse(503), UpstreamOverloaded, id="refusal-503"),
    pytest.param(Refuse(529), UpstreamOverloaded, id="refusal-529"),
    pytest.param(Refuse(429, retry_after=7), UpstreamOverloaded, id="429-retry-after"),
    pytest.param(Refuse(500, message="boom"), UpstreamError, id="http-500"),
    pytest.param(Unreachable(), UpstreamUnreachable, id="unreachable"),
    pytest.param(Hang(), UpstreamTimeout, id="hang"),
    pytest.param(KeepAliveOnly(), UpstreamTimeout, id="keepalive-only"),
    pytest.param(KeepAliveOnly(empty_chunks=True), UpstreamTimeout, id="empty-chunks-only"),
    pytest.param(CutAfter(0), UpstreamProtocolError, id="cut"),
    pytest.param(ErrorEvent(message="overheated"), UpstreamProtocolError, id="error-event"),
    pytest.param(Garbage(), UpstreamProtocolError, id="garbage"),
    pytest.param(Slow(delay=1.0), UpstreamTimeout, id="slow-first-token"),
]


@pytest.mark.parametrize(("fault", "error"), BEFORE)
async def test_fault_before_first_token_fails_over_unseen(
    fault: Step, error: type[UpstreamError]
) -> None:
    a, b = upstream("a", fault), upstream("b", Reply())
    r = router(a, b)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert out.notes == []  # the client cannot tell
    assert out.finish == ["stop"]
    assert out.answer.tried() == ["a", "b"]
    assert [type(f) for f in out.answer.failures] == [error]
    assert out.answer.failures[0].upstream == "a"
    assert a.calls[0].ended in ("failed", "closed") and b.calls[0].ended == "finished"
    assert b.bodies == [BODY]  # the next route gets the request as it came
    settled(r)


async def test_429_with_retry_after_rests_the_upstream_that_long() -> None:
    a, b = upstream("a", Refuse(429, retry_after=30)), upstream("b", Reply(), Reply())
    r = router(a, b)
    await ask(r)
    assert not r.usable("a")
    assert 29 < r.stats["a"].circuit.retry_in() <= 30
    out = await ask(r)  # the next request skips it without calling it
    assert out.text == DEFAULT_ANSWER
    assert called(a, b) == [1, 2]
    assert out.answer.tried() == ["b"]
    assert [type(f) for f in out.answer.failures] == [UpstreamEjected]
    settled(r)


async def test_lone_busy_refusal_rests_the_upstream_a_moment_not_an_ejection() -> None:
    # Refused with nothing else in flight, its limit falls to the floor: it cannot take even
    # one now, so it rests about a second (attempt._FLOOR_PAUSE), as a Retry-After would.
    a, b = upstream("a", Refuse(503)), upstream("b", Reply())
    r = router(a, b)
    await ask(r)
    circuit = r.stats["a"].circuit
    assert 0 < circuit.retry_in() <= 1.0
    assert circuit.ejections == 0
    settled(r)


async def test_auth_failure_ejects_at_once() -> None:
    a, b = upstream("a", Refuse(401, message="bad key")), upstream("b", Reply())
    r = router(a, b)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert isinstance(out.answer.failures[0], UpstreamAuthFailed)
    assert not r.usable("a")
    settled(r)


async def test_request_the_upstream_rejects_is_not_retried() -> None:
    a, b = upstream("a", Refuse(400, message="bad temperature")), upstream("b", Reply())
    r = router(a, b)
    with pytest.raises(UpstreamRejectedRequest, match="bad temperature"):
        await ask(r)
    assert called(a, b) == [1, 0]
    assert r.usable("a")  # the upstream is fine; the request was not
    settled(r)


async def test_role_chunk_alone_is_not_a_first_token() -> None:
    # Hang() sends headers and a role-only chunk first, as real servers do while prefilling.
    a, b = upstream("a", Hang()), upstream("b", Reply())
    r = router(a, b)
    out = await ask(r)
    assert a.calls[0].chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert out.answer.route.upstream == "b"
    settled(r)


async def test_every_route_failing_names_each_failure() -> None:
    a, b = upstream("a", Refuse(503)), upstream("b", Hang())
    r = router(a, b)
    with pytest.raises(AllUpstreamsFailed) as info:
        await ask(r)
    assert [(f.upstream, type(f)) for f in info.value.failures] == [
        ("a", UpstreamOverloaded),
        ("b", UpstreamTimeout),
    ]
    settled(r)


# --- after the first token: the answer continues on the next route ----------------------------

AFTER = [
    pytest.param(Hang(after=3), UpstreamTimeout, id="hang"),
    pytest.param(KeepAliveOnly(after=3), UpstreamTimeout, id="keepalive-only"),
    pytest.param(CutAfter(3), UpstreamProtocolError, id="cut"),
    pytest.param(ErrorEvent(after=3), UpstreamProtocolError, id="error-event"),
    pytest.param(Garbage(after=3), UpstreamProtocolError, id="garbage"),
]


@pytest.mark.parametrize(("fault", "error"), AFTER)
async def test_fault_after_first_token_continues_seamlessly(
    fault: Step, error: type[UpstreamError]
) -> None:
    a, b = upstream("a", fault), upstream("b", Reply())
    r = router(a, b)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER  # no word lost, none repeated
    assert out.finish == ["stop"]
    assert out.answer.tried() == ["a", "b"]
    assert [type(f) for f in out.answer.failures] == [error]
    assert out.notes == [
        f"nobusy: a failed mid-answer ({error.code}); continuing on b{UNCHECKED_PREFIX}"
    ]
    # b was asked to continue the partial answer (prefix mode), not to start again.
    assert b.bodies[0]["messages"][-1] == {
        "role": "assistant",
        "content": "alpha bravo charlie",
        "prefix": True,
    }
    assert b.bodies[0]["max_tokens"] == 97
    settled(r)


async def test_idle_gap_after_first_token_continues() -> None:
    a, b = upstream("a", Slow(gap=1.0)), upstream("b", Reply())
    r = router(a, b)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert [type(f) for f in out.answer.failures] == [UpstreamTimeout]
    assert "mid-answer" in out.answer.failures[0].message
    assert b.bodies[0]["messages"][-1]["content"] == "alpha"
    settled(r)


async def test_slow_but_within_the_idle_timeout_is_not_a_failure() -> None:
    a, b = upstream("a", Slow(gap=0.001, delay=0.001)), upstream("b")
    r = router(a, b)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert called(a, b) == [1, 0]
    settled(r)


async def test_empty_chunks_after_first_token_do_not_count_as_progress() -> None:
    # 40 empty chunks 10 ms apart, then the connection drops: with the idle timeout (50 ms)
    # enforced between tokens, the failure is the timeout, long before the drop.
    heartbeat = KeepAliveOnly(after=3, empty_chunks=True, interval=0.01, beats=40)
    a, b = upstream("a", heartbeat), upstream("b", Reply())
    r = router(a, b)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert [type(f) for f in out.answer.failures] == [UpstreamTimeout]


async def test_next_route_failing_before_its_first_token_is_skipped_too() -> None:
    a, b, c = upstream("a", CutAfter(3)), upstream("b", Refuse(503)), upstream("c", Reply())
    r = router(a, b, c)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert out.answer.tried() == ["a", "b", "c"]
    assert c.bodies[0]["messages"][-1]["content"] == "alpha bravo charlie"
    assert out.notes == [
        f"nobusy: a failed mid-answer (upstream_protocol_error); continuing on c{UNCHECKED_PREFIX}"
    ]
    settled(r)


async def test_no_route_left_mid_answer_ends_the_stream_with_the_error() -> None:
    a, b = upstream("a", CutAfter(3)), upstream("b", CutAfter(1))
    r = router(a, b)
    answer = await open_answer(walker(r))
    received: list[Chunk] = []
    with pytest.raises(AllUpstreamsFailed):
        async for chunk in answer.chunks:
            received.append(chunk)
    text = Outcome(answer, received).text
    assert text == "alpha bravo charlie delta "  # what the client has is all it gets
    settled(r)


async def test_usage_sums_every_attempt() -> None:
    # a sent three pieces and no usage chunk before it was cut: they count a token each.
    a, b = upstream("a", CutAfter(3)), upstream("b", Reply())
    r = router(a, b)
    out = await ask(r)
    assert out.usage["completion_tokens"] == 3 + 5
    settled(r)


async def test_client_leaving_closes_the_upstream_request() -> None:
    a = upstream("a", Slow(gap=0.001))
    r = router(a)
    answer = await open_answer(walker(r))
    await anext(answer.chunks)
    await answer.chunks.aclose()  # type: ignore[attr-defined]
    assert a.calls[0].ended == "closed"
    settled(r)


async def test_client_leaving_while_the_continuation_waits_closes_it() -> None:
    # The same attempt loop as before the first token: a continuation cancelled while it
    # waits for its first token is closed and its slot released.
    a = upstream("a", CutAfter(3))
    b = upstream("b", Hang(), first_token_timeout=5.0)
    r = router(a, b)
    reading = asyncio.ensure_future(ask(r))
    while not b.calls:  # until the continuation has been sent
        await asyncio.sleep(0.001)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    assert b.calls[0].ended == "closed"
    settled(r)


# --- continuation: what the next route is asked, per its mode ---------------------------------

LONG = DEFAULT_ANSWER + " india juliett kilo lima mike november oscar papa quebec romeo sierra"


@pytest.mark.parametrize("mode", ["prefix", "vllm", "none"])
async def test_continuation_request_per_mode(mode: str) -> None:
    a = upstream("a", CutAfter(3), answer=LONG)
    b = upstream("b", Reply(), answer=LONG, continuation=mode)
    r = router(a, b)
    out = await ask(r)
    assert out.text == LONG
    messages = b.bodies[0]["messages"]
    assert messages[0] == BODY["messages"][0]
    partial = {"role": "assistant", "content": "alpha bravo charlie"}
    if mode == "prefix":
        assert messages[1:] == [{**partial, "prefix": True}]
    elif mode == "vllm":
        assert messages[1:] == [partial]
        assert b.bodies[0]["continue_final_message"] is True
        assert b.bodies[0]["add_generation_prompt"] is False
    else:
        assert messages[1:] == [partial, {"role": "user", "content": CONTINUE_INSTRUCTION}]
    settled(r)


async def test_instructed_continuation_that_repeats_itself_is_trimmed() -> None:
    # mode none: the model is only asked to continue, and often repeats the last words.
    a = upstream("a", CutAfter(3), answer=LONG)
    repeat = LONG.removeprefix("alpha bravo ")
    b = upstream("b", Reply(repeat), continuation="none")
    r = router(a, b)
    out = await ask(r)
    assert out.text == LONG
    settled(r)


async def test_short_instructed_continuation_does_not_double_the_space() -> None:
    a = upstream("a", CutAfter(3))
    b = upstream("b", Reply(), continuation="none")
    r = router(a, b)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER


async def test_short_instructed_continuation_ends_with_its_finish_chunk() -> None:
    a = upstream("a", CutAfter(3))
    b = upstream("b", Reply("delta echo foxtrot golf hotel"), continuation="none")
    r = router(a, b)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    with_choices = [c for c in out.chunks if c.get("choices")]
    assert with_choices[-1]["choices"][0]["finish_reason"] == "stop"


async def test_the_continuation_mode_is_the_upstream_own_setting() -> None:
    # One source for an upstream's options: what it was built with (upstream.settings).
    a, b = upstream("a", CutAfter(3)), upstream("b", Reply(), continuation="none")
    settings = Settings(
        upstreams={"a": a.settings, "b": ScriptedSettings(continuation="prefix")},
        models={"m": ModelAlias(routes=(Route("a"), Route("b", tier=1)))},
    )
    r = Router(settings, {"a": a, "b": b}, Metrics(), random.Random(0))
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert b.bodies[0]["messages"][-1] == {"role": "user", "content": CONTINUE_INSTRUCTION}
    settled(r)


async def test_reasoning_cut_mid_thought_continues_when_the_next_route_thinks_alike() -> None:
    thinking = Reply(reasoning="first think it through", text="done")
    a = upstream("a", CutAfter(2, of=thinking))
    b = upstream("b", thinking)
    r = router(a, b)
    out = await ask(r)
    assert out.reasoning == "first think it through"
    assert out.text == "done"
    assert b.bodies == [BODY]  # no content yet: the request starts again, not a continuation
    assert out.notes == [
        "nobusy: a failed mid-answer (upstream_protocol_error); continuing on b: "
        "restarting the answer (no text had been sent)"
    ]
    settled(r)


async def test_reasoning_that_diverges_is_restarted_visibly() -> None:
    a = upstream("a", CutAfter(2, of=Reply(reasoning="first think it through", text="done")))
    b = upstream("b", Reply(reasoning="another way", text="done"))
    r = router(a, b)
    out = await ask(r)
    assert out.reasoning == "first think \n\nanother way"
    assert "nobusy: reasoning restarted on b" in out.notes
    assert out.text == "done"
    settled(r)


# --- tool calls: held until complete ----------------------------------------------------------

ARGS = '{"city": "Paris", "unit": "celsius", "days": 3}'


async def test_tool_call_cut_mid_arguments_is_made_again_whole() -> None:
    a = upstream("a", CutAfter(2, of=ToolCall("weather", ARGS, id="call_a", parts=4)))
    b = upstream("b", ToolCall("weather", ARGS, id="call_b", parts=4))
    r = router(a, b)
    out = await ask(r)
    assert out.tool_calls() == [{"id": "call_b", "name": "weather", "args": ARGS}]
    assert json.loads(out.tool_calls()[0]["args"]) == {
        "city": "Paris",
        "unit": "celsius",
        "days": 3,
    }
    assert out.finish == ["tool_calls"]
    assert a.calls[0].ended == "failed"
    assert out.answer.tried() == ["a", "b"]
    settled(r)


async def test_tool_call_deltas_are_held_until_the_call_is_complete() -> None:
    a = upstream("a", ToolCall("weather", ARGS, parts=4))
    r = router(a)
    answer = await open_answer(walker(r))
    seen = 0
    async for chunk in answer.chunks:
        deltas = [c.get("delta") or {} for c in chunk.get("choices") or ()]
        if any(d.get("tool_calls") for d in deltas):
            # By the first tool-call delta the client sees, the upstream has finished the call.
            sent = a.calls[0].chunks
            assert any(c["choices"] and c["choices"][0]["finish_reason"] for c in sent)
            seen += 1
    assert seen == 5  # the name, then four pieces of arguments
    settled(r)


# --- hedging ----------------------------------------------------------------------------------

HEDGE = HedgeSettings(after=0.01)


async def test_hedge_races_a_second_route_when_the_first_is_silent() -> None:
    a = upstream("a", Hang(), first_token_timeout=5.0)  # silent, but not yet timed out
    b = upstream("b", Reply())
    r = router(a, b, hedge=HEDGE)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert out.answer.route.upstream == "b"
    assert a.calls[0].ended == "closed"  # the loser is cancelled at once
    assert r.metrics.registry.get_sample_value("nobusy_hedges_total", {"alias": "m"}) == 1
    assert out.answer.tried()[-1] == "b"
    settled(r)


async def test_client_leaving_while_the_hedge_waits_closes_the_first_route() -> None:
    a = upstream("a", Hang(), first_token_timeout=5.0)
    r = router(a, upstream("b"), hedge=HedgeSettings(after=5.0))
    opening = asyncio.ensure_future(open_answer(walker(r)))
    while not a.calls:  # until a has been asked
        await asyncio.sleep(0)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    assert a.calls[0].ended == "closed"
    settled(r)


async def test_no_hedge_when_the_first_route_speaks_in_time() -> None:
    a, b = upstream("a", Reply()), upstream("b")
    r = router(a, b, hedge=HEDGE)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert called(a, b) == [1, 0]
    settled(r)


async def test_hedge_winner_failing_later_continues_on_the_next_route() -> None:
    a = upstream("a", Hang(), first_token_timeout=5.0)
    b, c = upstream("b", CutAfter(3)), upstream("c", Reply())
    r = router(a, b, c, hedge=HEDGE)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert called(a, b, c) == [1, 1, 1]
    assert c.bodies[0]["messages"][-1]["content"] == "alpha bravo charlie"
    settled(r)


async def test_the_cancelled_hedge_loser_is_among_the_upstreams_tried() -> None:
    a = upstream("a", Hang(), first_token_timeout=5.0)
    b = upstream("b", Reply())
    r = router(a, b, hedge=HEDGE)
    out = await ask(r)
    assert a.calls[0].ended == "closed"
    assert out.answer.failures == []  # cancelled, not failed
    assert out.answer.tried() == ["a", "b"]
    settled(r)


async def test_a_racer_failing_before_the_other_speaks_is_recorded() -> None:
    a = upstream("a", Hang())  # times out after 50 ms, while b is still silent
    b = upstream("b", Slow(delay=0.2), first_token_timeout=5.0)
    r = router(a, b, hedge=HEDGE)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert [(type(f), f.upstream) for f in out.answer.failures] == [(UpstreamTimeout, "a")]
    assert out.answer.tried() == ["a", "b"]
    settled(r)


async def test_a_route_the_hedge_skips_is_noted() -> None:
    a, b = upstream("a", Hang()), upstream("b")
    r = router(a, b, hedge=HEDGE)
    walk = walker(r)
    r.stats["b"].circuit.failure("paused", retry_after=30)  # after the plan was made
    with pytest.raises(AllUpstreamsFailed) as info:
        await open_answer(walk)
    notes = [(type(f), f.upstream) for f in info.value.failures]
    assert notes == [(UpstreamEjected, "b"), (UpstreamTimeout, "a")]
    assert "b: circuit open" in info.value.message
    assert called(a, b) == [1, 0]
    settled(r)


async def test_both_hedged_attempts_failing_are_both_recorded() -> None:
    a = upstream("a", Hang())  # times out after 50 ms
    b = upstream("b", Refuse(503))  # refuses at once, while a still hangs
    c = upstream("c", Reply())
    r = router(a, b, c, hedge=HEDGE)
    out = await ask(r)
    assert out.text == DEFAULT_ANSWER
    assert called(a, b, c) == [1, 1, 1]
    assert sorted(out.answer.tried()[:2]) == ["a", "b"]


async def test_both_hedged_attempts_failing_count_against_max_attempts() -> None:
    a, b, c = upstream("a", Hang()), upstream("b", Refuse(503)), upstream("c", Reply())
    r = router(a, b, c, hedge=HEDGE, max_attempts=2)
    with pytest.raises(AllUpstreamsFailed):
        await ask(r)
    assert called(a, b, c) == [1, 1, 0]


# --- what bounds failover ---------------------------------------------------------------------


async def test_retry_budget_spent_stops_failover() -> None:
    a, b = upstream("a", Refuse(503)), upstream("b")
    r = router(a, b, retry_budget=0.0, retry_budget_min=0)
    walk = walker(r, patience=0)  # no requeue: see the walk's own end
    with pytest.raises(QueueTimeout):
        await open_answer(walk)
    assert [type(f) for f in walk.failures] == [UpstreamOverloaded, RetryBudgetSpent]
    assert called(a, b) == [1, 0]  # a failing upstream cannot multiply the load on others
    settled(r)


async def test_max_attempts_counts_continuations() -> None:
    a, b, c = upstream("a", CutAfter(3)), upstream("b", CutAfter(1)), upstream("c")
    r = router(a, b, c, max_attempts=2)
    with pytest.raises(AllUpstreamsFailed):
        await ask(r)
    assert called(a, b, c) == [1, 1, 0]
    settled(r)


async def test_route_at_its_concurrency_ceiling_is_passed_over() -> None:
    a, b = upstream("a", Refuse(503)), upstream("b", Reply(), settings={"max_concurrency": 1})
    r = router(a, b)
    assert r.capacity.try_take("b")  # someone else holds b's only slot
    walk = walker(r, patience=0)  # no requeue: see the walk's own end
    with pytest.raises(QueueTimeout):
        await open_answer(walk)
    assert "at its concurrency limit" in str(AllUpstreamsFailed("m", walk.failures))
    assert called(a, b) == [1, 0]
    r.capacity.release("b", "ignore", 0.0)
    settled(r)


# --- "every route said busy": the walker requeues the request at the front --------------------


@pytest.mark.parametrize(
    ("steps", "requeue"),
    [
        pytest.param([Refuse(503), Refuse(429)], True, id="all-busy"),
        pytest.param([Refuse(503), Refuse(429, retry_after=5)], False, id="one-gave-retry-after"),
        pytest.param([Refuse(503), Hang()], False, id="one-hung"),
        pytest.param([Refuse(503), Refuse(500)], False, id="one-broken"),
    ],
)
async def test_only_busy_refusals_send_the_request_back_to_the_queue(
    steps: list[Step], requeue: bool
) -> None:
    ups = [upstream(name, step) for name, step in zip("ab", steps, strict=True)]
    r = router(*ups)
    # With no patience left, a requeue is the queue's 429 (QueueTimeout), not a 503.
    walk = walker(r, patience=0)
    with pytest.raises(QueueTimeout if requeue else AllUpstreamsFailed):
        await open_answer(walk)
    assert only_busy(AllUpstreamsFailed("m", walk.failures)) is requeue
    assert walk.ticket is None  # it never joined the queue
    settled(r)


async def test_busy_refusal_under_a_spent_retry_budget_still_requeues() -> None:
    a, b = upstream("a", Refuse(503)), upstream("b")
    r = router(a, b, retry_budget=0.0, retry_budget_min=0)
    walk = walker(r, patience=0)
    with pytest.raises(QueueTimeout):
        await open_answer(walk)
    assert only_busy(AllUpstreamsFailed("m", walk.failures))  # the budget's note is no attempt
    settled(r)


async def test_every_route_busy_waits_first_in_line_for_the_next_slot() -> None:
    # Request x holds a slot on a while it answers; y is refused as busy, goes back to the
    # front of the queue, and is given the slot x releases: it walks again, from a plan with
    # no failures, and answers.
    a = upstream("a", Slow(gap=0.005), Refuse(503), Reply())
    r = router(a)
    x = await open_answer(walker(r))
    reading = asyncio.ensure_future(Outcome(x).read())
    walk = walker(r)
    y = await open_answer(walk)
    out = await Outcome(y).read()
    assert out.text == DEFAULT_ANSWER
    assert (await reading).text == DEFAULT_ANSWER
    assert called(a) == [3]
    assert y.failures == [] and y.tried() == ["a"]  # the busy round is behind it
    assert walk.queue_ms > 0
    assert walk.ticket is None
    settled(r)


async def test_client_leaving_while_requeued_gives_up_its_place() -> None:
    a = upstream("a", Slow(gap=0.01), Refuse(503), Reply())
    r = router(a)
    x = await open_answer(walker(r))
    walk = walker(r)
    opening = asyncio.ensure_future(open_answer(walk))
    while walk.ticket is None:  # until y is back in the queue
        await asyncio.sleep(0.001)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    walk.close()  # as the request's ledger entry does; nothing left to give up
    assert not any(r.capacity.queue.depth().values())
    await Outcome(x).read()
    assert called(a) == [2]  # the slot x released went to no one
    settled(r)
