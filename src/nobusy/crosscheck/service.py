"""A cross-check request: checked, fanned out to its sources through the normal routing (each
source one upstream call against the caller's key, its usage row marked ``crosscheck:ID``),
then analysed; optionally judged.

A source that fails is reported in its slot and the others are analysed; with one answer left
the single-answer detector runs and the report says so.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from starlette.requests import Request

from nobusy.crosscheck.detector import Source, check_answer, cross_check
from nobusy.crosscheck.explain import language_of
from nobusy.crosscheck.judge import judge
from nobusy.crosscheck.sources import Check, SourceResult, ask, text_of
from nobusy.crosscheck.support import embed_sentences
from nobusy.errors import InvalidRequest, ModelNotAllowed
from nobusy.keys import Key
from nobusy.knowledge.embedder import Embedder, load_embedder
from nobusy.schema import Message, invalid_request, parse_json_object
from nobusy.state import AppState, app_state

__all__ = ["analyse", "parse", "run"]

MIN_MODELS, MAX_MODELS = 2, 5


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[Message]
    models: list[str]
    judge: str | None = None
    language: str | None = None
    stream: bool = False
    max_tokens: int | None = None


def parse(raw: bytes, state: AppState, key: Key | None, settings_max: int) -> Check:
    """The request, or a 400 naming what is wrong with it."""
    body = parse_json_object(raw, "a JSON object with `messages` and `models`")
    try:
        typed = msgspec.convert(body, _Body)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    users = [m for m in typed.messages if m.role == "user"]
    question = text_of(users[-1].content).strip() if users else ""
    if not question:
        raise InvalidRequest(
            "The question is empty: the last user message has no text.", param="messages"
        )
    models = typed.models
    if not MIN_MODELS <= len(models) <= MAX_MODELS:
        raise InvalidRequest(
            f"`models` must name {MIN_MODELS} to {MAX_MODELS} sources; it names {len(models)}.",
            param="models",
        )
    if len(set(models)) != len(models):
        raise InvalidRequest("`models` names a source twice.", param="models")
    router = state.router
    unknown = [m for m in models if not router.direct_route(m)]
    if unknown:
        raise InvalidRequest(
            f"Unknown model(s) in `models`: {', '.join(unknown)}. Use aliases of /v1/models "
            "or UPSTREAM/MODEL routes of configured upstreams.",
            param="models",
        )
    if typed.judge is not None:
        if typed.judge in models:
            raise InvalidRequest(
                f"The judge '{typed.judge}' is one of the answering sources; pick another alias.",
                param="judge",
            )
        if not router.direct_route(typed.judge):
            raise InvalidRequest(f"Unknown judge model '{typed.judge}'.", param="judge")
    if typed.language not in (None, "zh", "en"):
        raise InvalidRequest("`language` must be `zh` or `en`.", param="language")
    if key is not None:
        for name in [*models, *([typed.judge] if typed.judge else [])]:
            if not key.allows_model(name):
                raise ModelNotAllowed(
                    f"Key '{key.name}' may not use model '{name}'.", param="models"
                )
    messages = [msgspec.to_builtins(m) for m in typed.messages]
    messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
    return Check(
        id="xc-" + secrets.token_hex(8),
        messages=messages,
        question=question,
        models=list(models),
        judge=typed.judge,
        language=typed.language or language_of(question),
        stream=typed.stream,
        max_tokens=typed.max_tokens or settings_max,
    )


def analyse(
    check: Check,
    results: Sequence[SourceResult],
    embedder: Embedder | None,
    hosts: dict[str, tuple[str, ...]],
    vectors: dict[str, npt.NDArray[np.float32]] | None = None,
) -> dict[str, Any]:
    """Run the detector over the answers that came back; the analysis part of the report."""
    ok = [r for r in results if r.answer is not None]
    if len(ok) >= 2:
        sources = [Source(r.answer or "", hosts.get(_upstream(r), ())) for r in ok]
        given = [(vectors or {}).get(r.model) for r in ok]
        report = cross_check(
            check.question, sources, embedder=embedder, language=check.language, vectors=given
        )
        for r, answer in zip(ok, report.answers, strict=True):
            r.report = answer
        return {
            "mode": "cross",
            "agreement": round(report.agreement, 3),
            "embedder": report.embedder,
            "note": None,
        }
    for r in ok:
        r.report = check_answer(
            r.answer or "",
            check.question,
            host=hosts.get(_upstream(r), ()),
            language=check.language,
        )
    note = {
        "zh": "只有一个来源给出了回答，因此只运行了单个回答的广告检测，没有交叉比对。",
        "en": "Only one source answered: the single-answer detector ran, without a cross-check.",
    }[check.language if check.language == "zh" else "en"]
    return {
        "mode": "single" if ok else "none",
        "agreement": None,
        "embedder": None,
        "note": note if ok else None,
    }


def _upstream(result: SourceResult) -> str:
    """The upstream's name (the usage record names the route, ``UPSTREAM/MODEL``)."""
    return (result.upstream or "").partition("/")[0]


async def embedder_of(state: AppState) -> Embedder | None:
    """The configured sentence embedder, loaded off the event loop on first use."""
    name = state.settings.crosscheck.embedder
    if name == "none":
        return None
    return await asyncio.to_thread(load_embedder, name)


async def run(request: Request, check: Check) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The cross-check as events: ``source`` for each answer as it arrives (in arrival order),
    then ``analysis`` with the whole report."""
    state = app_state(request)
    labels = [chr(ord("A") + i) for i in range(len(check.models))]
    note = f"crosscheck:{check.id}"
    embedding = asyncio.ensure_future(embedder_of(state))
    tasks = {
        asyncio.ensure_future(ask(request, check, m, label, note, check.messages)): i
        for i, (m, label) in enumerate(zip(check.models, labels, strict=True))
    }
    results: list[SourceResult | None] = [None] * len(tasks)
    # Each answer's sentences are embedded as soon as it arrives, while slower sources are
    # still answering: after the slowest, only its own sentences are left to embed.
    embedded: dict[str, asyncio.Future[npt.NDArray[np.float32]]] = {}

    async def embed(text: str) -> npt.NDArray[np.float32]:
        return await asyncio.to_thread(embed_sentences, text, await embedding)

    try:
        for done in asyncio.as_completed(list(tasks)):
            result = await done
            i = check.models.index(result.model)
            results[i] = result
            if result.answer is not None:
                embedded[result.model] = asyncio.ensure_future(embed(result.answer))
            yield "source", result.as_dict()
        embedder = await embedding
        vectors = {model: await future for model, future in embedded.items()}
    finally:
        pending: list[asyncio.Future[Any]] = [*tasks, *embedded.values(), embedding]
        for task in pending:
            task.cancel()
    final = [r for r in results if r is not None]
    hosts = state.settings.crosscheck.hosts
    analysis = await asyncio.to_thread(analyse, check, final, embedder, hosts, vectors)
    judged: dict[str, Any] | None = None
    if check.judge is not None and sum(r.answer is not None for r in final) >= 1:
        judged = await judge(request, check, final, note)
    yield (
        "analysis",
        {
            "id": check.id,
            "object": "nobusy.crosscheck",
            "question": check.question,
            "language": check.language,
            **analysis,
            "judge": judged,
            "sources": [r.as_dict() for r in final],
        },
    )
