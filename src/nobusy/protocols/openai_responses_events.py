"""OpenAI's Responses API out: the internal chunks as semantic events, or one response object.

The stream (https://platform.openai.com/docs/api-reference/responses-streaming) opens with
``response.created`` and ``response.in_progress``; each output item (reasoning, the message,
each function call) is ``response.output_item.added``, its deltas
(``response.reasoning_text.delta``, ``response.output_text.delta`` inside a content part,
``response.function_call_arguments.delta``), their ``.done`` events and
``response.output_item.done``; it ends with ``response.completed`` (``response.incomplete``
when the answer hit ``max_output_tokens``) carrying the whole response and its usage. Every
event has a ``sequence_number``. A continuation after a cut is invisible here as in chat: the
items carry on, nothing is sent twice. An error after the headers is an ``error`` event then
``response.failed``.

A request with a ``file_search`` tool (run by nobusy before the answer starts) gets a
``file_search_call`` item first (its ``in_progress``, ``searching`` and ``completed`` events),
and each ``[n]`` of the answer that names a retrieved passage becomes a ``file_citation``
annotation of the output text (``response.output_text.annotation.added``), at the marker's
place. ``results`` are not included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from nobusy.knowledge.grounding import FileSearch
from nobusy.schema import ChatRequest
from nobusy.store.usage import UsageRecord
from nobusy.upstreams.base import Chunk

__all__ = ["ResponsesEvents", "file_citations", "render_response"]

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_CITE = re.compile(r"\[(\d{1,3})\]")


def file_citations(text: str, nobusy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A ``file_citation`` for each ``[n]`` of ``text`` that names a retrieved passage
    (``nobusy``: the answer's ``nobusy.citations``), at the marker's place."""
    passages = {c["index"]: c for c in (nobusy or {}).get("citations", ())}
    out = []
    for match in _CITE.finditer(text):
        cited = passages.get(int(match.group(1)))
        if cited is not None:
            out.append(
                {
                    "type": "file_citation",
                    "file_id": cited["file_id"],
                    "filename": cited["filename"],
                    "index": match.start(),
                }
            )
    return out


def _file_search_call(item_id: str, search: FileSearch, status: str) -> dict[str, Any]:
    queries = [search.query] if search.query else []
    return {
        "type": "file_search_call",
        "id": item_id,
        "queries": queries,
        "status": status,
        "results": None,
    }


def _file_search_tool(search: FileSearch) -> dict[str, Any]:
    return {
        "type": "file_search",
        "vector_store_ids": list(search.stores),
        "max_num_results": search.top_k,
        "filters": search.filters,
        "ranking_options": {"ranker": "auto", "score_threshold": search.score_threshold},
    }


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _response(
    response_id: str,
    created: int,
    chat: ChatRequest,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    finish: str | None = None,
    previous: str | None = None,
    search: FileSearch | None = None,
) -> dict[str, Any]:
    reason = _INCOMPLETE.get(finish or "")
    if status == "completed" and reason is not None:
        status = "incomplete"
    tools = [
        {"type": "function", **(tool.get("function") or {})} for tool in chat.tools or () if tool
    ]
    if search is not None:
        tools.insert(0, _file_search_tool(search))
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": chat.model,
        "output": output,
        "error": None,
        "incomplete_details": {"reason": reason} if status == "incomplete" else None,
        "instructions": None,
        "max_output_tokens": chat.max_tokens,
        "metadata": {},
        "parallel_tool_calls": True,
        "previous_response_id": previous,
        "temperature": chat.temperature,
        "top_p": chat.top_p,
        "text": {"format": {"type": "text"}},
        "tool_choice": chat.tool_choice or "auto",
        "tools": tools,
        "truncation": "disabled",
        "usage": usage,
    }


def _reasoning(item_id: str, text: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
    }


def _message(
    item_id: str, text: str, status: str, notes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    done = status == "completed"
    content = [{"type": "output_text", "text": text, "annotations": notes or []}] if done else []
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _function_call(
    item_id: str, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class ResponsesEvents:
    """The ``Encoder`` of one streamed Responses answer: its items, the one open, the count."""

    __slots__ = (
        "chat",
        "created",
        "done",
        "extension",
        "finish",
        "items",
        "open",
        "previous",
        "record",
        "response_id",
        "search",
        "seq",
    )

    def __init__(
        self,
        chat: ChatRequest,
        record: UsageRecord,
        previous: str | None = None,
        done: Callable[[dict[str, Any]], None] | None = None,
        search: FileSearch | None = None,
    ) -> None:
        self.chat = chat
        self.search = search
        self.record = record
        self.previous = previous
        self.done = done  # given the final response (to keep it)
        self.response_id = f"resp_{record.request_id}"
        self.created = int(record.started)
        self.seq = 0
        # Each output item so far: its kind key, id, text or arguments, name and call id.
        self.items: list[dict[str, Any]] = []
        self.open: str | None = None
        self.finish: str | None = None
        # What nobusy adds at the end (``nobusy.citations``), asked for once the answer is
        # whole: a key of the completed response, as the whole (non-streamed) response has it.
        self.extension: Callable[[], dict[str, Any]] | None = None

    def _event(self, kind: str, **data: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _snapshot(self, status: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
        output = [self._item(item, "completed") for item in self.items]
        return _response(
            self.response_id,
            self.created,
            self.chat,
            status,
            output,
            usage,
            self.finish,
            self.previous,
            self.search,
        )

    def _item(self, item: dict[str, Any], status: str) -> dict[str, Any]:
        text = "".join(item["parts"])
        if item["kind"] == "reasoning":
            return _reasoning(item["id"], text)
        if item["kind"] == "message":
            return _message(item["id"], text, status, item.get("annotations"))
        if item["kind"] == "file_search" and self.search is not None:
            return _file_search_call(item["id"], self.search, status)
        return _function_call(item["id"], item["call_id"], item["name"], text, status)

    def start(self) -> bytes:
        response = self._snapshot("in_progress")
        out = self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )
        if self.search is None:
            return out
        # The search ran before the answer started: its item comes first, already done.
        item = {"kind": "file_search", "index": 0, "parts": []}
        item["id"] = f"fs_{self.record.request_id}"
        self.items.append(item)
        where = {"item_id": item["id"], "output_index": 0}
        out += self._event(
            "response.output_item.added", output_index=0, item=self._item(item, "in_progress")
        )
        for phase in ("in_progress", "searching", "completed"):
            out += self._event(f"response.file_search_call.{phase}", **where)
        return out + self._event(
            "response.output_item.done", output_index=0, item=self._item(item, "completed")
        )

    def chunk(self, chunk: Chunk) -> bytes:
        out = bytearray()
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                item = self._ensure("reasoning", out)
                item["parts"].append(delta["reasoning_content"])
                out += self._event(
                    "response.reasoning_text.delta",
                    item_id=item["id"],
                    output_index=item["index"],
                    content_index=0,
                    delta=delta["reasoning_content"],
                )
            if delta.get("content"):
                item = self._ensure("message", out)
                item["parts"].append(delta["content"])
                out += self._event(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=item["index"],
                    content_index=0,
                    delta=delta["content"],
                    logprobs=[],
                )
            for call in delta.get("tool_calls") or ():
                index = int(call.get("index") or 0)
                function = call.get("function") or {}
                item = self._ensure(f"tool:{index}", out, call)
                if function.get("arguments"):
                    item["parts"].append(function["arguments"])
                    out += self._event(
                        "response.function_call_arguments.delta",
                        item_id=item["id"],
                        output_index=item["index"],
                        delta=function["arguments"],
                    )
            self.finish = choice.get("finish_reason") or self.finish
        return bytes(out)

    def note(self, text: str) -> bytes:
        return b": " + text.encode() + b"\n\n"

    def end(self) -> bytes:
        # The answer is whole: its citations are worked out once, for the last item's
        # annotations and the completed response's ``nobusy``.
        extension = self.extension() if self.extension is not None else None
        out = bytearray(self._close(extension))
        usage = _usage(self.record.prompt_tokens, self.record.completion_tokens)
        response = self._snapshot("completed", usage)
        if extension is not None:
            response["nobusy"] = extension
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        out += self._event(kind, response=response)
        if self.done is not None:
            self.done(response)
        return bytes(out)

    def error(self, status: int, body: dict[str, Any]) -> bytes:
        error = body.get("error") or {}
        code, message = error.get("code") or error.get("type"), error.get("message", "")
        out = self._event("error", code=code, message=message, param=error.get("param"))
        failed = self._snapshot("failed")
        failed["error"] = {"code": code or "server_error", "message": message}
        return out + self._event("response.failed", response=failed)

    def _ensure(
        self, kind: str, out: bytearray, call: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if self.open == kind:
            return self.items[-1]
        out += self._close()
        n = len(self.items)
        rid = self.record.request_id
        item: dict[str, Any] = {"kind": kind.split(":")[0], "index": n, "parts": []}
        if item["kind"] == "reasoning":
            item["id"] = f"rs_{rid}_{n}"
        elif item["kind"] == "message":
            item["id"] = f"msg_{rid}_{n}"
        else:
            function = (call or {}).get("function") or {}
            item["id"] = f"fc_{rid}_{n}"
            item["call_id"] = (call or {}).get("id") or f"call_{rid}_{n}"
            item["name"] = function.get("name") or ""
        self.items.append(item)
        self.open = kind
        added = self._item(item, "in_progress")
        if item["kind"] == "reasoning":
            added["content"] = []
        out += self._event("response.output_item.added", output_index=n, item=added)
        if item["kind"] == "message":
            part = {"type": "output_text", "text": "", "annotations": []}
            out += self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=n,
                content_index=0,
                part=part,
            )
        return item

    def _close(self, extension: dict[str, Any] | None = None) -> bytes:
        """Close the open item; a message's annotations come from ``extension`` when the
        caller has it, else from asking for it now."""
        if self.open is None:
            return b""
        self.open = None
        item = self.items[-1]
        text, n, item_id = "".join(item["parts"]), item["index"], item["id"]
        out = b""
        if item["kind"] == "reasoning":
            out += self._event(
                "response.reasoning_text.done",
                item_id=item_id,
                output_index=n,
                content_index=0,
                text=text,
            )
        elif item["kind"] == "message":
            if extension is None and self.extension is not None:
                extension = self.extension()
            notes = file_citations(text, extension) if extension is not None else []
            item["annotations"] = notes
            for i, note in enumerate(notes):
                out += self._event(
                    "response.output_text.annotation.added",
                    item_id=item_id,
                    output_index=n,
                    content_index=0,
                    annotation_index=i,
                    annotation=note,
                )
            part = {"type": "output_text", "text": text, "annotations": notes}
            out += self._event(
                "response.output_text.done",
                item_id=item_id,
                output_index=n,
                content_index=0,
                text=text,
                logprobs=[],
            )
            out += self._event(
                "response.content_part.done",
                item_id=item_id,
                output_index=n,
                content_index=0,
                part=part,
            )
        else:
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=n,
                name=item["name"],
                arguments=text,
            )
        done = self._item(item, "completed")
        return out + self._event("response.output_item.done", output_index=n, item=done)


def render_response(
    completion: dict[str, Any],
    chat: ChatRequest,
    previous: str | None = None,
    search: FileSearch | None = None,
) -> dict[str, Any]:
    """A whole answer (one ``chat.completion``, with ``nobusy.citations`` when passages were
    retrieved) as a Responses ``response`` object."""
    choice = completion["choices"][0]
    message = choice["message"]
    rid = completion["id"].removeprefix("chatcmpl-")
    output: list[dict[str, Any]] = []
    if search is not None:
        output.append(_file_search_call(f"fs_{rid}", search, "completed"))
    if message.get("reasoning_content"):
        output.append(_reasoning(f"rs_{rid}_{len(output)}", message["reasoning_content"]))
    if message.get("content"):
        notes = file_citations(message["content"], completion.get("nobusy"))
        output.append(_message(f"msg_{rid}_{len(output)}", message["content"], "completed", notes))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        n = len(output)
        output.append(
            _function_call(
                f"fc_{rid}_{n}",
                call.get("id") or f"call_{rid}_{n}",
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )
    usage = completion["usage"]
    return _response(
        f"resp_{rid}",
        completion["created"],
        chat,
        "completed",
        output,
        _usage(usage["prompt_tokens"], usage["completion_tokens"]),
        choice.get("finish_reason"),
        previous,
        search,
    )
