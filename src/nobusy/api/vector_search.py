"""``POST /v1/vector_stores/{id}/search``: a store's best chunks for a query, in OpenAI's shape.

``query`` (a string, or several joined as one), ``max_num_results`` (1–50), attribute
``filters`` and ``ranking_options.score_threshold`` (the fused score, 0–1) are honoured.
``rewrite_query`` is accepted and not acted on: rewriting needs a model call the search would
wait for, and ``search_query`` says truthfully that the query was searched as sent. Hybrid
retrieval (BM25 over jieba words fused with vectors) is the only ranker.

An expired store is refused (400 ``vector_store_expired``). A store still ingesting answers
from the files done; the page's ``nobusy`` object says the
store's status and ``file_counts``, so a client can tell a partial answer.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from nobusy.api.files import knowledge
from nobusy.api.vector_stores import not_expired, visible_store
from nobusy.errors import InvalidRequest
from nobusy.responses import JSONResponse
from nobusy.schema import parse_json_object

__all__ = ["routes", "search"]

MAX_RESULTS = 50


async def search(request: Request) -> Response:
    """Search a store: chunks ranked by BM25 and vectors fused, with their scores."""
    kb = knowledge(request)
    body = parse_json_object(await request.body())
    store = await visible_store(request)
    not_expired(store)  # as OpenAI: an expired store answers nothing until it is revived
    queries = _queries(body.get("query"))
    k = body.get("max_num_results", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_RESULTS:
        raise InvalidRequest(
            f"max_num_results must be a whole number from 1 to {MAX_RESULTS}.",
            param="max_num_results",
        )
    filters = body.get("filters")
    if filters is not None and not isinstance(filters, dict):
        raise InvalidRequest("filters must be a comparison or compound filter.", param="filters")
    threshold = _threshold(body.get("ranking_options"))
    if not isinstance(body.get("rewrite_query", False), bool):
        raise InvalidRequest("rewrite_query must be a boolean.", param="rewrite_query")

    def run() -> dict[str, Any]:
        hits = kb.search(store, "\n".join(queries), k=k, filters=filters, score_threshold=threshold)
        names = kb.records.filenames(list({hit.file_id for hit in hits}))
        counts = kb.records.counts(store.id)
        kb.records.touch(store.id)
        return {
            "object": "vector_store.search_results.page",
            "search_query": queries,
            "data": [
                {
                    "file_id": hit.file_id,
                    "filename": names.get(hit.file_id, ""),
                    "score": round(float(hit.score), 6),
                    "attributes": hit.attributes,
                    "content": [{"type": "text", "text": hit.text}],
                }
                for hit in hits
            ],
            "has_more": False,
            "next_page": None,
            "nobusy": {
                "vector_store_status": "in_progress" if counts["in_progress"] else "completed",
                "file_counts": counts,
            },
        }

    return JSONResponse(await run_in_threadpool(run))


def _queries(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(q, str) and q.strip() for q in value)
    ):
        raise InvalidRequest("query must be a non-empty string or list of strings.", param="query")
    if sum(len(q) for q in value) > 4096:
        raise InvalidRequest("query: at most 4096 characters.", param="query")
    return list(value)


def _threshold(options: Any) -> float:
    if options is None:
        return 0.0
    if not isinstance(options, dict):
        raise InvalidRequest("ranking_options must be an object.", param="ranking_options")
    value = options.get("score_threshold", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidRequest(
            "ranking_options.score_threshold must be a number from 0 to 1.",
            param="ranking_options",
        )
    return float(value)


routes: list[BaseRoute] = [
    Route("/v1/vector_stores/{store_id}/search", search, methods=["POST"]),
]
