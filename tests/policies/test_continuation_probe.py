"""The continuation probe against the shipped fake, which honours the modes it is told to."""

from __future__ import annotations

import pytest

from nobusy.routing.continuation import Method
from nobusy.routing.continuation_probe import (
    ContinuationModes,
    Verdict,
    best_method,
    judge,
    probe_continuation,
)
from nobusy.testing.fake_upstream import FakeOptions
from nobusy.upstreams import build_upstream, settings_class
from tests.testing.test_fake_upstream import serve


def _upstream(url: str, model: str, continuation: str = "auto"):  # type: ignore[no-untyped-def]
    spec = settings_class("openai").model_validate(
        {"base_url": f"{url}/v1", "default_model": model, "continuation": continuation}
    )
    return build_upstream("probed", spec), spec


@pytest.mark.parametrize(
    ("honoured", "prefix", "vllm", "best"),
    [
        ("all", "continues", "continues", "prefix"),
        ("vllm", "restarts", "continues", "vllm"),
        ("none", "restarts", "restarts", "none"),
    ],
)
async def test_probe_finds_what_the_upstream_honours(
    honoured: str, prefix: str, vllm: str, best: str
) -> None:
    with serve(FakeOptions()) as url:
        upstream, spec = _upstream(url, f"ok:continuation={honoured}")
        try:
            verdicts = await probe_continuation(upstream, upstream.default_model)
            assert {m: v.outcome for m, v in verdicts.items()} == {"prefix": prefix, "vllm": vllm}
            assert best_method(verdicts) == Method(best, verified=best != "none")
            method = await ContinuationModes().method(upstream, spec, upstream.default_model)
            assert method.mode == best
        finally:
            await upstream.aclose()


async def test_a_configured_mode_is_used_unchecked_and_an_unreachable_one_asks_in_words() -> None:
    with serve(FakeOptions()) as url:
        upstream, spec = _upstream(url, "ok", continuation="prefix")
        modes = ContinuationModes()
        try:
            assert await modes.method(upstream, spec, "ok") == Method("prefix")
            upstream2, spec2 = _upstream(url, "http503")
            try:
                assert (await modes.method(upstream2, spec2, "http503")).mode == "none"
            finally:
                await upstream2.aclose()
        finally:
            await upstream.aclose()


def test_judge_tells_continuing_from_starting_over() -> None:
    full = "one two three four five six"
    assert judge(full, 3, " four five six") == Verdict("continues")
    assert judge(full, 3, "one two three four") == Verdict("restarts")
    assert judge(full, 3, "Sure! four").outcome == "differs"


def test_notes_claim_a_seamless_continuation_only_when_checked() -> None:
    assert "checked on this upstream" in Method("prefix", verified=True).how
    assert "not checked" in Method("vllm").how
    assert "may repeat" in Method("none").how
    assert "raw completion" in Method("prefix", True, "raw completion").how
