"""The mid-answer idle deadline (``routing.idle.IdleTimer``), in-process with short budgets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nobusy.routing.idle import IdleTimer


async def _chunks(gaps: list[float], token: bool = True) -> AsyncIterator[bool]:
    for gap in gaps:
        await asyncio.sleep(gap)
        yield token


async def _read(idle: float, chunks: AsyncIterator[bool], serve: float = 0.0) -> str:
    """Read like ``AnswerStream`` does, spending ``serve`` seconds on the client per chunk."""
    timer = IdleTimer(idle)
    try:
        while True:
            timer.wait()
            try:
                token = await anext(chunks)
            except StopAsyncIteration:
                return "finished"
            except asyncio.CancelledError:
                if timer.timed_out():
                    return "timed out"
                raise
            timer.got(token)
            await asyncio.sleep(serve)
    finally:
        timer.cancel()


async def test_a_silent_upstream_times_out() -> None:
    assert await _read(0.05, _chunks([0.0, 1.0])) == "timed out"


async def test_tokens_within_the_budget_finish() -> None:
    assert await _read(0.2, _chunks([0.01] * 10)) == "finished"


async def test_time_spent_on_the_client_is_not_the_upstreams() -> None:
    # Each chunk comes quickly, but the client takes longer than the budget to read it.
    assert await _read(0.05, _chunks([0.0] * 4), serve=0.12) == "finished"


async def test_chunks_without_a_token_spend_the_budget() -> None:
    # 0.04 s apart is within a budget of 0.1 s, but no chunk refills it: the fourth wait ends it.
    assert await _read(0.1, _chunks([0.04] * 10, token=False)) == "timed out"


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    task = asyncio.create_task(_read(5.0, _chunks([10.0])))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_from_elsewhere_wins_over_a_timeout() -> None:
    async def cancelled_at_the_deadline() -> str:
        current = asyncio.current_task()
        assert current is not None
        asyncio.get_running_loop().call_later(0.05, current.cancel)
        return await _read(0.05, _chunks([10.0]))

    task = asyncio.create_task(cancelled_at_the_deadline())
    with pytest.raises(asyncio.CancelledError):
        await task
