"""OpenAI's Responses API in: a ``/v1/responses`` body read into the internal chat request.

``instructions`` becomes the first (system) message; ``input`` is a string or a list of items:
messages (roles ``user``, ``system``, ``developer``, ``assistant``; ``input_text``,
``output_text`` and ``input_image`` parts), ``function_call`` items (the assistant's
``tool_calls``) and ``function_call_output`` items (``tool`` messages). Function ``tools``,
``tool_choice``, ``max_output_tokens``, ``reasoning.effort`` and ``text.format`` map to their
chat names. A ``file_search`` tool is run by nobusy itself, over its own knowledge base: its
``vector_store_ids`` (the key's stores), ``max_num_results``, ``filters`` and
``ranking_options.score_threshold`` choose the passages put into the prompt, and the answer
carries a ``file_search_call`` item and ``file_citation`` annotations for its ``[n]``. A
``previous_response_id`` puts the conversation kept with that response (``store.responses``,
the same key's only) before ``input``; an unknown or expired one is a 404. The answer goes
back out through ``openai_responses_events`` and, unless the request says ``store: false``, is
kept in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec

from nobusy.errors import InvalidRequest, NotFound
from nobusy.knowledge.grounding import TOP_K, FileSearch, query_of, requested
from nobusy.protocols.openai_responses_events import ResponsesEvents, render_response
from nobusy.routing.relay import Encoder
from nobusy.schema import ChatRequest, invalid_request, parse_json_object
from nobusy.store.interfaces import ResponsesStore
from nobusy.store.usage import UsageRecord

__all__ = ["OpenAIResponses", "ResponsesRequest", "parse_responses_request"]

History = Callable[[str], list[Any] | None]

_ROLES = ("user", "system", "developer", "assistant")


class _Request(msgspec.Struct):
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    user: str | None = None
    store: bool = True


@dataclass(slots=True)
class ResponsesRequest:
    """A Responses request read: the internal request, and what keeping its answer needs."""

    chat: ChatRequest
    body: dict[str, Any]  # the chat body that goes upstream
    items: list[Any]  # the conversation as Responses items: the previous ones, then the input
    store: bool = True
    previous: str | None = None
    file_search: FileSearch | None = None  # run by nobusy, never sent upstream


@dataclass(slots=True)
class OpenAIResponses:
    """The ``ClientProtocol`` of one ``/v1/responses`` request: its parser (with the kept
    conversations of its key) and its way out, which keeps the answer when asked to."""

    store: ResponsesStore | None
    key_id: str | None
    read: ResponsesRequest | None = field(default=None, init=False)

    def parse(self, raw: bytes) -> tuple[ChatRequest, dict[str, Any]]:
        store, key_id = self.store, self.key_id
        history = None if store is None else lambda rid: store.items(rid, key_id)
        self.read = parse_responses_request(raw, history)
        return self.read.chat, self.read.body

    @property
    def file_search(self) -> FileSearch | None:
        """The request's ``file_search`` tool, which the pipeline runs (``knowledge``)."""
        return self.read.file_search if self.read is not None else None

    def encoder(self, chat: ChatRequest, record: UsageRecord) -> Encoder:
        return ResponsesEvents(chat, record, self._previous(), self._keep, self.file_search)

    def render(self, completion: dict[str, Any], chat: ChatRequest) -> dict[str, Any]:
        response = render_response(completion, chat, self._previous(), self.file_search)
        self._keep(response)
        return response

    def _previous(self) -> str | None:
        return self.read.previous if self.read is not None else None

    def _keep(self, response: dict[str, Any]) -> None:
        read = self.read
        if self.store is None or read is None or not read.store:
            return
        conversation = [*read.items, *response["output"]]
        self.store.put(response["id"], self.key_id, conversation, response)


def parse_responses_request(raw: bytes, history: History | None = None) -> ResponsesRequest:
    """A Responses body read into the internal request, or a 400 (404: an unknown
    ``previous_response_id``; ``history`` gives the kept conversation of a response id)."""
    body_in = parse_json_object(raw, "a JSON object with `model` and `input`")
    try:
        request = msgspec.convert(body_in, _Request)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    if not request.model:
        raise InvalidRequest("'model' must not be empty.", param="model")
    kept: list[Any] = []
    if request.previous_response_id is not None:
        found = history(request.previous_response_id) if history is not None else None
        if found is None:
            raise NotFound(
                f"Previous response with id '{request.previous_response_id}' not found (it "
                "may have expired, or belong to another key).",
                param="previous_response_id",
            )
        kept = found
    given = (
        [{"role": "user", "content": request.input}]
        if isinstance(request.input, str)
        else request.input
    )
    messages: list[dict[str, Any]] = []
    if request.instructions:  # a previous response's instructions are not carried over
        messages.append({"role": "system", "content": request.instructions})
    _items(kept, messages)
    _items(given, messages)
    items = [*kept, *given]
    if not messages:
        raise InvalidRequest("'input' must contain at least one item.", param="input")
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}  # response.completed carries usage
    search = None
    if request.tools:
        functions = []
        for i, tool in enumerate(request.tools):
            if tool.get("type") == "file_search":
                if search is not None:
                    raise InvalidRequest(
                        "Only one file_search tool may be given.", param=f"tools[{i}]"
                    )
                search = _file_search(tool, f"tools[{i}]")
            else:
                functions.append(_tool(tool, f"tools[{i}]"))
        if functions:
            body["tools"] = functions
    if request.tool_choice is not None and not _chose_search(request.tool_choice, search):
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.max_output_tokens is not None:
        if request.max_output_tokens < 1:
            raise InvalidRequest(
                "'max_output_tokens' must be at least 1.", param="max_output_tokens"
            )
        body["max_tokens"] = request.max_output_tokens
    for name in ("temperature", "top_p", "user"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    effort = (request.reasoning or {}).get("effort")
    if isinstance(effort, str):
        body["reasoning_effort"] = effort
    text_format = (request.text or {}).get("format")
    if isinstance(text_format, dict) and text_format.get("type") in ("json_schema", "json_object"):
        body["response_format"] = _response_format(text_format)
    try:
        chat = msgspec.convert(body, ChatRequest)
    except msgspec.ValidationError as exc:
        raise invalid_request(str(exc)) from None
    if search is not None:
        search = replace(search, query=query_of(messages))
    return ResponsesRequest(chat, body, items, request.store, request.previous_response_id, search)


def _items(items: list[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    for i, item in enumerate(items):
        at = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise InvalidRequest(
                    f"Invalid value for '{at}.role': expected one of {', '.join(_ROLES)}.",
                    param=f"{at}.role",
                )
            messages.append({"role": role, "content": _content(item.get("content"), at)})
        elif kind == "function_call":
            call_id, name = item.get("call_id"), item.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise InvalidRequest(
                    f"'{at}': a function_call item needs 'call_id' and 'name'.", param=at
                )
            arguments = item.get("arguments")
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments or "{}"},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # several calls of one turn
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise InvalidRequest(f"'{at}.call_id' is required.", param=f"{at}.call_id")
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output, f"{at}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue  # a summary or encrypted reasoning of another model: nothing to send on
        else:
            raise InvalidRequest(
                f"Invalid value for '{at}.type': {kind!r}; nobusy takes 'message', "
                "'function_call', 'function_call_output' and 'reasoning' items.",
                param=f"{at}.type",
            )


def _content(content: object, at: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"'{at}.content' must be a string or a list of parts.", param=f"{at}.content"
        )
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{at}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(
                f"Invalid value for '{where}': expected an input_text or output_text part "
                "with 'text', or an input_image part with 'image_url' (files are not "
                "supported).",
                param=where,
            )
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _text_of(output: object, at: str) -> str:
    content = _content(output, at)
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


def _tool(tool: dict[str, Any], at: str) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise InvalidRequest(
            f"Invalid value for '{at}.type': {tool.get('type')!r}; nobusy runs file_search "
            "itself and passes function tools on (OpenAI's other hosted tools run at OpenAI).",
            param=f"{at}.type",
        )
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"Missing required parameter: '{at}.name'.", param=f"{at}.name")
    function: dict[str, Any] = {"name": name}
    for option in ("description", "parameters", "strict"):
        if tool.get(option) is not None:
            function[option] = tool[option]
    return {"type": "function", "function": function}


def _file_search(tool: dict[str, Any], at: str) -> FileSearch:
    """A ``file_search`` tool read: the stores (checked against the key later), how many
    passages, the attribute filters and the score threshold."""
    ids = tool.get("vector_store_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise InvalidRequest(
            f"'{at}.vector_store_ids' must be a list of vector store ids.",
            param=f"{at}.vector_store_ids",
        )
    try:
        stores = requested(",".join(ids)) if ids else ()
    except InvalidRequest as exc:
        raise InvalidRequest(exc.message, param=f"{at}.vector_store_ids") from None
    if not stores:
        raise InvalidRequest(
            f"'{at}.vector_store_ids' must name at least one vector store.",
            param=f"{at}.vector_store_ids",
        )
    k = tool.get("max_num_results", TOP_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 50:
        raise InvalidRequest(
            f"'{at}.max_num_results' must be a whole number from 1 to 50.",
            param=f"{at}.max_num_results",
        )
    filters = tool.get("filters")
    if filters is not None and not isinstance(filters, dict):
        raise InvalidRequest(
            f"'{at}.filters' must be a comparison or compound filter.", param=f"{at}.filters"
        )
    ranking = tool.get("ranking_options") or {}
    threshold = ranking.get("score_threshold", 0.0) if isinstance(ranking, dict) else None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        threshold = -1.0
    if not 0.0 <= threshold <= 1.0:
        raise InvalidRequest(
            f"'{at}.ranking_options.score_threshold' must be a number from 0 to 1.",
            param=f"{at}.ranking_options",
        )
    return FileSearch(stores, k, filters, float(threshold))


def _chose_search(choice: str | dict[str, Any], search: FileSearch | None) -> bool:
    """Whether ``tool_choice`` forces the file search: nobusy always runs it, so it goes no
    further."""
    return isinstance(choice, dict) and choice.get("type") == "file_search" and bool(search)


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                "Invalid value for 'tool_choice': expected 'auto', 'none', 'required' or "
                '{"type": "function", "name": ...}.',
                param="tool_choice",
            )
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidRequest(
        'Invalid value for \'tool_choice\': expected {"type": "function", "name": ...}.',
        param="tool_choice",
    )


def _response_format(text_format: dict[str, Any]) -> dict[str, Any]:
    if text_format["type"] == "json_object":
        return {"type": "json_object"}
    schema = {
        k: text_format[k] for k in ("name", "schema", "strict", "description") if k in text_format
    }
    return {"type": "json_schema", "json_schema": schema}
