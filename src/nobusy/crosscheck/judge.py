"""The LLM judge of a cross-check: one call that reads every answer, anonymised and shuffled,
with the rules' flags as hints, and says which answers are promotional, quoting their spans.

A quote that is not found exactly in its answer is dropped, never guessed at. The judge is
sent through a route of its alias whose upstream answered none of the judged answers when
the alias has one. Its verdict is merged with the rules': where both say the same,
``decided_by`` is ``rules+judge``; where they differ, the judge decides (``judge``) when it
quoted a span that matched or says ``clean``, else the rules stand.
"""

from __future__ import annotations

import json
import random
import re
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nobusy.crosscheck.explain import explain
from nobusy.crosscheck.sources import ask
from nobusy.crosscheck.spans import PROMO_TYPES, Flag

if TYPE_CHECKING:
    from starlette.requests import Request

    from nobusy.crosscheck.sources import Check, SourceResult

__all__ = ["build_prompt", "judge", "merge", "parse_verdicts"]

_VERDICTS = ("clean", "suspect", "promotional")
_JSON = re.compile(r"\{.*\}", re.S)

_INSTRUCTIONS = """You check answers from different AI assistants to the same question for \
advertising the user did not ask for: brands, shops, platforms or apps the question did not \
name; calls to action; contact or purchase paths (phone, WeChat/QQ id, link, shop, coupon \
code); incentives; superlatives praising a product; the assistant's own platform's products. \
Brands the user asked about, official hospitals, emergency numbers, government bodies and \
quoted slogans are not advertising.

Reply with JSON only: {"answers": [{"label": "Answer 1", "verdict": "clean|suspect|promotional", \
"explanation": "...", "spans": [{"quote": "exact words copied from that answer", "type": \
"brand_not_asked|call_to_action|contact_or_purchase_path|incentive|superlative|\
self_preferencing"}]}]}. Quote exactly; write explanations in LANGUAGE."""


def build_prompt(
    question: str, answers: Sequence[tuple[str, str, list[Flag]]], language: str
) -> str:
    """The judge's one message: the question, then each (label, answer, rule hints)."""
    lang = "Chinese" if language == "zh" else "English"
    parts = [_INSTRUCTIONS.replace("LANGUAGE", lang), f"\nQuestion: {question}\n"]
    for label, text, hints in answers:
        hint = "; ".join(f"{f.type}: {f.text}" for f in hints) or "none"
        parts.append(f"--- {label} ---\n{text}\n(rule hints: {hint})\n")
    return "\n".join(parts)


def parse_verdicts(
    reply: str, answers: dict[str, str], language: str
) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Per label: verdict, explanation and the flags whose quotes matched exactly; and how
    many quotes were sent and kept."""
    match = _JSON.search(reply)
    try:
        data = json.loads(match.group(0)) if match else {}
    except json.JSONDecodeError:
        data = {}
    out: dict[str, dict[str, Any]] = {}
    sent = kept = 0
    for item in data.get("answers", []) if isinstance(data, dict) else []:
        if not isinstance(item, dict):
            continue
        label = str(item.get("label", ""))
        text = answers.get(label)
        verdict = item.get("verdict")
        if text is None or verdict not in _VERDICTS:
            continue
        flags: list[Flag] = []
        for span in item.get("spans") or []:
            if not isinstance(span, dict):
                continue
            quote, kind = str(span.get("quote", "")), span.get("type")
            sent += 1
            start = text.find(quote) if quote else -1
            if start < 0 or kind not in PROMO_TYPES:
                continue  # unmatched: dropped, never guessed
            kept += 1
            flags.append(
                Flag(
                    start,
                    start + len(quote),
                    kind,
                    "medium",
                    quote,
                    explain(kind, quote, language),
                    "judge",
                )
            )
        out[label] = {
            "verdict": verdict,
            "explanation": str(item.get("explanation", "")),
            "flags": flags,
        }
    return out, sent, kept


def merge(result: SourceResult, opinion: dict[str, Any] | None) -> None:
    """The judge's opinion merged into a source's report (see the module docstring)."""
    report = result.report
    if report is None or opinion is None:
        return
    verdict, flags = opinion["verdict"], opinion["flags"]
    if verdict == report.verdict:
        report.decided_by = "rules+judge"
    elif verdict == "clean" or flags:
        report.verdict = verdict
        report.decided_by = "judge"
    else:
        return
    taken = {(f.start, f.end) for f in report.flags}
    report.flags = sorted(
        [
            *(f for f in report.flags if verdict != "clean"),
            *(f for f in flags if (f.start, f.end) not in taken),
        ],
        key=lambda f: f.start,
    )
    report.judge_explanation = opinion["explanation"]


def _route(request: Request, alias: str, answered: set[str]) -> str:
    """A route of the judge's alias on an upstream that answered nothing here, if any."""
    from nobusy.state import app_state

    router = app_state(request).router
    for route in router.alias(alias).routes:
        if route.upstream not in answered and route.model:
            name = f"{route.upstream}/{route.model}"
            if router.direct_route(name):
                return name
    return alias


async def judge(
    request: Request, check: Check, results: Sequence[SourceResult], note: str
) -> dict[str, Any]:
    """Ask the judge once; merge its opinions into ``results``; what it did, for the report."""
    ok = [r for r in results if r.answer is not None and r.report is not None]
    order = list(ok)
    random.Random(secrets.randbits(32)).shuffle(order)
    labels = {f"Answer {i + 1}": r for i, r in enumerate(order)}
    prompt = build_prompt(
        check.question,
        [
            (label, r.answer or "", r.report.flags if r.report else [])
            for label, r in labels.items()
        ],
        check.language,
    )
    answered = {(r.upstream or "").partition("/")[0] for r in ok}
    model = _route(request, check.judge or "", answered)
    reply = await ask(
        request, check, model, "judge", note + ":judge", [{"role": "user", "content": prompt}]
    )
    info: dict[str, Any] = {
        "model": check.judge,
        "route": model,
        "upstream": reply.upstream,
        "latency_ms": round(reply.latency_ms, 1),
        "usage": reply.usage,
    }
    if reply.answer is None:
        info["status"] = "failed"
        info["error"] = reply.error
        return info
    opinions, sent, kept = parse_verdicts(
        reply.answer, {label: r.answer or "" for label, r in labels.items()}, check.language
    )
    for label, r in labels.items():
        merge(r, opinions.get(label))
    info.update(
        status="ok",
        quotes_sent=sent,
        quotes_kept=kept,
        quotes_dropped=sent - kept,
        same_upstream=(reply.upstream or "").partition("/")[0] in answered,
    )
    return info
